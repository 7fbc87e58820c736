from tortoise import migrations
from tortoise.migrations import operations as ops

# The count of the people storing originals (app.usage.storers_sql), read once a minute by each web process
# while the image store is crowded, read every kept original's row: 0.3 s a million. These two indexes hold
# only the rows that store something, by person, so that it walks from one person to the next instead. Partial
# indexes, which Tortoise's models cannot declare: the same SQL on SQLite and PostgreSQL. On PostgreSQL,
# CREATE INDEX holds off writes to the table while it builds (about a second a million rows).

STORING = [
    "CREATE INDEX predictions_storing ON predictions (user_id) WHERE image_path <> ''",
    "CREATE INDEX collections_storing ON collections (user_id) WHERE archive_path <> ''",
]

NOT_STORING = ["DROP INDEX predictions_storing", "DROP INDEX collections_storing"]


class Migration(migrations.Migration):
    dependencies = [("app", "0014_feedback_by_label")]

    initial = False

    operations = [ops.RunSQL(STORING, NOT_STORING)]
