from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('app', '0007_recent_finished')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Feedback',
            index=Index(fields=['user_id', 'updated_at']),
        ),
        ops.AddIndex(
            model_name='Feedback',
            index=Index(fields=['updated_at']),
        ),
    ]
