from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('app', '0001_initial')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Collection',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('app.User', source_field='user_id', db_constraint=True, to_field='id', related_name='collections', on_delete=OnDelete.CASCADE)),
                ('name', fields.CharField(default='', max_length=255)),
                ('total', fields.IntField(default=0)),
                ('created_at', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'collections', 'app': 'app', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Prediction',
            name='collection',
            field=fields.ForeignKeyField('app.Collection', source_field='collection_id', null=True, db_constraint=True, to_field='id', related_name='predictions', on_delete=OnDelete.CASCADE),
        ),
    ]
