from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

# The admin's agreement table and label filter read feedback_by_label, not every feedback row joined to its
# prediction. Triggers keep it, in the transaction of each change however it is made: feedback inserted,
# its is_correct changed, or deleted (also by a cascade from its account). A prediction deleted first deletes
# its feedback, while the prediction (and so the label it is counted under) can still be read: the cascade
# would delete it after. Created before the table is filled: on PostgreSQL, CREATE TRIGGER holds off writes
# to feedback until this migration commits, so none is missed.

SQLITE = [
    """CREATE TRIGGER feedback_by_label_insert AFTER INSERT ON feedback BEGIN
    INSERT INTO feedback_by_label (label, total, agreed)
    SELECT COALESCE(label, ''), 1, NEW.is_correct FROM predictions WHERE id = NEW.prediction_id
    ON CONFLICT (label) DO UPDATE SET total = total + 1, agreed = agreed + excluded.agreed;
END""",
    """CREATE TRIGGER feedback_by_label_delete AFTER DELETE ON feedback BEGIN
    UPDATE feedback_by_label SET total = total - 1, agreed = agreed - OLD.is_correct
    WHERE label = (SELECT COALESCE(label, '') FROM predictions WHERE id = OLD.prediction_id);
    DELETE FROM feedback_by_label WHERE total = 0;
END""",
    """CREATE TRIGGER feedback_by_label_update AFTER UPDATE OF is_correct ON feedback
WHEN OLD.is_correct <> NEW.is_correct BEGIN
    UPDATE feedback_by_label SET agreed = agreed + NEW.is_correct - OLD.is_correct
    WHERE label = (SELECT COALESCE(label, '') FROM predictions WHERE id = NEW.prediction_id);
END""",
    """CREATE TRIGGER predictions_feedback_first BEFORE DELETE ON predictions BEGIN
    DELETE FROM feedback WHERE prediction_id = OLD.id;
END""",
]

POSTGRES = [
    """CREATE FUNCTION feedback_by_label_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO feedback_by_label (label, total, agreed)
        SELECT COALESCE(label, ''), 1, NEW.is_correct::int FROM predictions WHERE id = NEW.prediction_id
        ON CONFLICT (label) DO UPDATE
        SET total = feedback_by_label.total + 1, agreed = feedback_by_label.agreed + excluded.agreed;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE feedback_by_label SET total = total - 1, agreed = agreed - OLD.is_correct::int
        WHERE label = (SELECT COALESCE(label, '') FROM predictions WHERE id = OLD.prediction_id);
        DELETE FROM feedback_by_label
        WHERE label = (SELECT COALESCE(label, '') FROM predictions WHERE id = OLD.prediction_id) AND total = 0;
    ELSE
        UPDATE feedback_by_label SET agreed = agreed + NEW.is_correct::int - OLD.is_correct::int
        WHERE label = (SELECT COALESCE(label, '') FROM predictions WHERE id = NEW.prediction_id);
    END IF;
    RETURN NULL;
END $$""",
    """CREATE TRIGGER feedback_by_label_change AFTER INSERT OR DELETE ON feedback
FOR EACH ROW EXECUTE FUNCTION feedback_by_label_count()""",
    """CREATE TRIGGER feedback_by_label_update AFTER UPDATE OF is_correct ON feedback
FOR EACH ROW WHEN (OLD.is_correct IS DISTINCT FROM NEW.is_correct) EXECUTE FUNCTION feedback_by_label_count()""",
    """CREATE FUNCTION predictions_feedback_first() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM feedback WHERE prediction_id = OLD.id;
    RETURN OLD;
END $$""",
    """CREATE TRIGGER predictions_feedback_first BEFORE DELETE ON predictions
FOR EACH ROW EXECUTE FUNCTION predictions_feedback_first()""",
]

FILL = """INSERT INTO feedback_by_label (label, total, agreed)
SELECT COALESCE(p.label, ''), COUNT(*), SUM(CASE WHEN f.is_correct THEN 1 ELSE 0 END)
FROM feedback f JOIN predictions p ON p.id = f.prediction_id GROUP BY COALESCE(p.label, '')"""

SQLITE_DROP = [
    "DROP TRIGGER feedback_by_label_insert",
    "DROP TRIGGER feedback_by_label_delete",
    "DROP TRIGGER feedback_by_label_update",
    "DROP TRIGGER predictions_feedback_first",
]

POSTGRES_DROP = [
    "DROP TRIGGER feedback_by_label_change ON feedback",
    "DROP TRIGGER feedback_by_label_update ON feedback",
    "DROP TRIGGER predictions_feedback_first ON predictions",
    "DROP FUNCTION feedback_by_label_count()",
    "DROP FUNCTION predictions_feedback_first()",
]


def is_sqlite(schema_editor) -> bool:
    return schema_editor.client.capabilities.dialect == "sqlite"


async def count_feedback(apps, schema_editor) -> None:
    for statement in SQLITE if is_sqlite(schema_editor) else POSTGRES:
        await schema_editor.client.execute_script(statement)
    await schema_editor.client.execute_script(FILL)


async def stop_counting(apps, schema_editor) -> None:
    for statement in SQLITE_DROP if is_sqlite(schema_editor) else POSTGRES_DROP:
        await schema_editor.client.execute_script(statement)


class Migration(migrations.Migration):
    dependencies = [("app", "0013_collection_counts")]

    initial = False

    operations = [
        ops.CreateModel(
            name="FeedbackByLabel",
            fields=[
                ("label", fields.CharField(primary_key=True, unique=True, db_index=True, max_length=100)),
                ("total", fields.IntField()),
                ("agreed", fields.IntField()),
            ],
            options={"table": "feedback_by_label", "app": "app", "pk_attr": "label"},
            bases=["Model"],
        ),
        ops.RunPython(count_feedback, stop_counting),
    ]
