from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from app.models import Status
from json import dumps, loads
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='User',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('email', fields.CharField(unique=True, max_length=254)),
                ('name', fields.CharField(default='', max_length=100)),
                ('password_hash', fields.CharField(max_length=255)),
                ('is_admin', fields.BooleanField(default=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'users', 'app': 'app', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Prediction',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('app.User', source_field='user_id', db_constraint=True, to_field='id', related_name='predictions', on_delete=OnDelete.CASCADE)),
                ('image_sha256', fields.CharField(db_index=True, max_length=64)),
                ('image_path', fields.CharField(max_length=255)),
                ('file_name', fields.CharField(default='', max_length=255)),
                ('status', fields.CharEnumField(default=Status.QUEUED, db_index=True, description='QUEUED: queued\nDONE: done\nFAILED: failed', enum_type=Status, max_length=10)),
                ('label', fields.CharField(null=True, max_length=100)),
                ('wnid', fields.CharField(null=True, max_length=16)),
                ('score', fields.FloatField(null=True)),
                ('top5', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('model_name', fields.CharField(max_length=50)),
                ('model_version', fields.CharField(default='', max_length=50)),
                ('model_weights', fields.CharField(max_length=100)),
                ('cached', fields.BooleanField(default=False)),
                ('latency_ms', fields.FloatField(null=True)),
                ('error', fields.TextField(null=True, unique=False)),
                ('created_at', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
                ('finished_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'predictions', 'app': 'app', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Feedback',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('prediction', fields.ForeignKeyField('app.Prediction', source_field='prediction_id', db_constraint=True, to_field='id', related_name='feedback', on_delete=OnDelete.CASCADE)),
                ('user', fields.ForeignKeyField('app.User', source_field='user_id', db_constraint=True, to_field='id', related_name='feedback', on_delete=OnDelete.CASCADE)),
                ('is_correct', fields.BooleanField()),
                ('correct_label', fields.CharField(null=True, max_length=100)),
                ('correct_wnid', fields.CharField(null=True, max_length=16)),
                ('comment', fields.TextField(default='', unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'feedback', 'app': 'app', 'unique_together': (('prediction', 'user'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
    ]
