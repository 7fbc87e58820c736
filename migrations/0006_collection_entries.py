from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.migrations.constraints import UniqueConstraint

class Migration(migrations.Migration):
    dependencies = [('app', '0005_archive_bytes')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Prediction',
            name='entry',
            field=fields.IntField(null=True),
        ),
        ops.AddConstraint(
            model_name='Prediction',
            constraint=UniqueConstraint(fields=('collection', 'entry'), name=None),
        ),
    ]
