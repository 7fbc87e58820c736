from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('app', '0009_collections_newest')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Prediction',
            index=Index(fields=['user_id', 'collection_id', 'created_at']),
        ),
    ]
