from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('app', '0006_collection_entries')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Prediction',
            index=Index(fields=['finished_at']),
        ),
    ]
