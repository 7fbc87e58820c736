# Feedback filtered by predicted label, or to the wrong only (GET /api/feedback, the feedback pages, the admin's
# list of everyone's), joined every row of the person to its prediction and read them all for each page (about
# 140 ms a request on PostgreSQL for a person with 20,000). The prediction's label is copied onto its feedback,
# and indexes give each filter's rows in the lists' order. The label is fixed once the prediction is done, and
# feedback is given only then: copied as the row is inserted, by a trigger, whoever inserts it (web processes
# of the release before, while this one rolls out, do not name the column), and for the feedback already there
# in one statement. Created before the fill: on PostgreSQL, CREATE TRIGGER holds off writes to feedback until
# this migration commits, so none is missed; CREATE INDEX holds them off while it builds.
from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

SQLITE = [
    """CREATE TRIGGER feedback_predicted_label AFTER INSERT ON feedback WHEN NEW.predicted_label IS NULL BEGIN
    UPDATE feedback SET predicted_label = (SELECT label FROM predictions WHERE id = NEW.prediction_id)
    WHERE id = NEW.id;
END"""
]

POSTGRES = [
    """CREATE FUNCTION feedback_predicted_label() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.predicted_label IS NULL THEN
        NEW.predicted_label := (SELECT label FROM predictions WHERE id = NEW.prediction_id);
    END IF;
    RETURN NEW;
END $$""",
    """CREATE TRIGGER feedback_predicted_label BEFORE INSERT ON feedback
FOR EACH ROW EXECUTE FUNCTION feedback_predicted_label()""",
]

SQLITE_DROP = ["DROP TRIGGER feedback_predicted_label"]

POSTGRES_DROP = ["DROP TRIGGER feedback_predicted_label ON feedback", "DROP FUNCTION feedback_predicted_label()"]

FILL = """UPDATE feedback SET predicted_label = (
    SELECT predictions.label FROM predictions WHERE predictions.id = feedback.prediction_id
)"""


def is_sqlite(schema_editor) -> bool:
    return schema_editor.client.capabilities.dialect == "sqlite"


async def copy_labels(apps, schema_editor) -> None:
    for statement in SQLITE if is_sqlite(schema_editor) else POSTGRES:
        await schema_editor.client.execute_script(statement)
    await schema_editor.client.execute_script(FILL)


async def stop_copying(apps, schema_editor) -> None:
    for statement in SQLITE_DROP if is_sqlite(schema_editor) else POSTGRES_DROP:
        await schema_editor.client.execute_script(statement)


class Migration(migrations.Migration):
    dependencies = [("app", "0019_collection_order")]

    initial = False

    operations = [
        ops.AddField(
            model_name="Feedback",
            name="predicted_label",
            field=fields.CharField(null=True, max_length=100),
        ),
        ops.RunPython(copy_labels, stop_copying),
        ops.AddIndex(
            model_name="Feedback",
            index=Index(fields=["user_id", "predicted_label", "updated_at", "id"]),
        ),
        ops.AddIndex(
            model_name="Feedback",
            index=Index(fields=["user_id", "is_correct", "updated_at", "id"]),
        ),
        ops.AddIndex(
            model_name="Feedback",
            index=Index(fields=["predicted_label", "updated_at", "id"]),
        ),
        ops.AddIndex(
            model_name="Feedback",
            index=Index(fields=["is_correct", "updated_at", "id"]),
        ),
    ]
