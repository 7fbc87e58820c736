from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('app', '0010_single_images')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Prediction',
            index=Index(fields=['status', 'user_id', 'collection_id', 'created_at']),
        ),
    ]
