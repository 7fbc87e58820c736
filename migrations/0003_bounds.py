from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index
from app.models import CollectionStatus

class Migration(migrations.Migration):
    dependencies = [('app', '0002_collections')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Collection',
            name='status',
            field=fields.CharEnumField(default=CollectionStatus.CLASSIFYING, db_index=True, description='READING: reading\nCLASSIFYING: classifying\nDONE: done', enum_type=CollectionStatus, max_length=12),
        ),
        ops.AddField(
            model_name='Collection',
            name='archive_path',
            field=fields.CharField(default='', max_length=255),
        ),
        ops.AddField(
            model_name='Collection',
            name='error',
            field=fields.TextField(null=True, unique=False),
        ),
        ops.AddField(
            model_name='Prediction',
            name='image_bytes',
            field=fields.BigIntField(default=0),
        ),
        ops.AddField(
            model_name='Prediction',
            name='enqueued_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddIndex(
            model_name='Prediction',
            index=Index(fields=['user_id', 'created_at']),
        ),
    ]
