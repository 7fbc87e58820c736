from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('app', '0011_waiting_images')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='User',
            index=Index(fields=['created_at']),
        ),
    ]
