# Lists are ordered by time, then by id (ties broken, for pages after an item, `before`): the indexes that
# serve them carry the id, so PostgreSQL reads them in order (without it: an incremental sort on each page).
from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('app', '0017_emails_normalised')]

    initial = False

    operations = [
        ops.RemoveIndex(
            model_name='Collection',
            name=None,
            fields=['user_id', 'created_at'],
        ),
        ops.AddIndex(
            model_name='Collection',
            index=Index(fields=['user_id', 'created_at', 'id']),
        ),
        ops.RemoveIndex(
            model_name='Feedback',
            name=None,
            fields=['user_id', 'updated_at'],
        ),
        ops.RemoveIndex(
            model_name='Feedback',
            name=None,
            fields=['updated_at'],
        ),
        ops.AddIndex(
            model_name='Feedback',
            index=Index(fields=['user_id', 'updated_at', 'id']),
        ),
        ops.AddIndex(
            model_name='Feedback',
            index=Index(fields=['updated_at', 'id']),
        ),
        ops.RemoveIndex(
            model_name='Prediction',
            name=None,
            fields=['user_id', 'created_at'],
        ),
        ops.RemoveIndex(
            model_name='Prediction',
            name=None,
            fields=['user_id', 'collection_id', 'created_at'],
        ),
        ops.AddIndex(
            model_name='Prediction',
            index=Index(fields=['user_id', 'created_at', 'id']),
        ),
        ops.AddIndex(
            model_name='Prediction',
            index=Index(fields=['user_id', 'collection_id', 'created_at', 'id']),
        ),
    ]
