from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('app', '0004_image_results')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Collection',
            name='archive_bytes',
            field=fields.BigIntField(default=0, db_default=0),
        ),
    ]
