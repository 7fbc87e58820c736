from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('app', '0008_feedback_newest')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Collection',
            index=Index(fields=['user_id', 'created_at']),
        ),
    ]
