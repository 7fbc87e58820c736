from tortoise import migrations
from tortoise.migrations import operations as ops

from app.accounts import normalize_email
from app.models import placeholders

# Sign-in and sign-up look an email up as normalize_email spells it (NFKC, case folded) since 0396e8f, but
# the accounts made before were stored as typed: `Ada@Example.com` could no longer sign in, and could sign
# up again as a second account. Each is spelled as it is looked up now, unless another account has that
# spelling already (its person signed up again since): that one is left as typed, as the newer is theirs.


async def normalise_emails(apps, schema_editor) -> None:
    client = schema_editor.client
    rows = await client.execute_query_dict("SELECT id, email FROM users")
    taken = {row["email"] for row in rows}
    email_mark, id_mark = placeholders(client.capabilities.dialect, 2)
    for row in rows:
        email = normalize_email(row["email"])
        if email != row["email"] and email not in taken:
            update = f"UPDATE users SET email = {email_mark} WHERE id = {id_mark}"
            await client.execute_query(update, [email, row["id"]])
            taken.add(email)


class Migration(migrations.Migration):
    dependencies = [("app", "0016_charged_once")]

    initial = False

    operations = [ops.RunPython(normalise_emails, ops.RunPython.noop)]
