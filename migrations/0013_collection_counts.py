from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('app', '0012_accounts_newest')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Collection',
            name='done_count',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Collection',
            name='failed_count',
            field=fields.IntField(null=True),
        ),
    ]
