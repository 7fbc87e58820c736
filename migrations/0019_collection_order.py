from tortoise import migrations
from tortoise.migrations import operations as ops

# A collection's items in its pages' order (app.collections.items: by file name, then time, then id): its CSV
# is read a page of 500 at a time after the last row sent, and each page read and sorted every item of the
# collection without it (12 ms a page of a 20,000-image collection on PostgreSQL, 40 pages a CSV). Partial:
# single uploads (no collection) are most rows, and each would pay for an entry no query reads. The same SQL
# on SQLite and PostgreSQL; on PostgreSQL, CREATE INDEX holds off writes to the table while it builds.

ORDERED = [
    "CREATE INDEX predictions_collection_order ON predictions (collection_id, file_name, created_at, id)"
    " WHERE collection_id IS NOT NULL"
]

NOT_ORDERED = ["DROP INDEX predictions_collection_order"]


class Migration(migrations.Migration):
    dependencies = [("app", "0018_keyset_order")]

    initial = False

    operations = [ops.RunSQL(ORDERED, NOT_ORDERED)]
