from tortoise import migrations
from tortoise.migrations import operations as ops

# A person's original is charged (image_bytes > 0) to one of their predictions that keep it, the others 0
# (app/usage.py charged_bytes). Two uploads of one image at once both found it new and both were charged:
# this index makes the second insert fail, and it is then made charged 0 (app/predictions.py insert).
# The duplicates charged before it are charged 0 first, all but one per person and original.
UNCHARGE_DUPLICATES = """UPDATE predictions SET image_bytes = 0
WHERE image_bytes > 0 AND image_path <> '' AND EXISTS (
    SELECT 1 FROM predictions AS first WHERE first.user_id = predictions.user_id
    AND first.image_sha256 = predictions.image_sha256 AND first.image_bytes > 0 AND first.image_path <> ''
    AND first.id < predictions.id
)"""

CHARGED_ONCE = """CREATE UNIQUE INDEX predictions_charged_once ON predictions (user_id, image_sha256)
WHERE image_bytes > 0 AND image_path <> ''"""


class Migration(migrations.Migration):
    dependencies = [("app", "0015_who_stores")]

    initial = False

    operations = [
        ops.RunSQL([UNCHARGE_DUPLICATES, CHARGED_ONCE], ["DROP INDEX predictions_charged_once"]),
    ]
