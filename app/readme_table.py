"""The README's settings table, made from the declarations in app/settings.py, which runs this:
`python -m app.settings --write-readme` (`make settings-table`) after changing a setting."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from pydantic.fields import FieldInfo

README = Path("README.md")
TABLE_START = "<!-- settings-table:start -->"
TABLE_END = "<!-- settings-table:end -->"


def _shown_default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return (field.default_factory.__doc__ or "computed").strip()
    if field.default == "":
        return "empty"
    return f"`{field.default}`"


def markdown_table(fields: dict[str, FieldInfo]) -> str:
    """A markdown table of these settings: each one's variable, its default and what it does."""
    rows = ["| setting | default | what |", "| --- | --- | --- |"]
    for name, field in fields.items():
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {_shown_default(field)} | {description} |")
    return "\n".join(rows) + "\n"


def spliced(readme: str, table: str) -> str:
    """`readme` with `table` between its TABLE_START and TABLE_END markers."""
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {TABLE_START} ... {TABLE_END} markers")
    return readme[: start + len(TABLE_START)] + "\n" + table + readme[end:]


def write_readme(table: Callable[[], str]) -> None:
    parser = argparse.ArgumentParser(description="Print the settings table, or write it into the README.")
    parser.add_argument("--write-readme", nargs="?", const=README, type=Path, metavar="PATH", help="default: %(const)s")
    args = parser.parse_args()
    if args.write_readme is None:
        print(table(), end="")
        return
    path: Path = args.write_readme
    text = path.read_text(encoding="utf-8")
    updated = spliced(text, table())
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    print(f"{path}: settings table {'updated' if updated != text else 'up to date'}")
