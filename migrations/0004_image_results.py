from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('app', '0003_bounds')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Prediction',
            index=Index(fields=['image_sha256', 'status']),
        ),
    ]
