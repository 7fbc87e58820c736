"""A bench rewrites only its own section of docs/reliability.md: the hand-written ones stay."""

from pathlib import Path

from bench.sections import replace_section, write_section

DOC = """# Reliability

Intro, written by hand.

## Faults under load

Old figures.

| a | b |
| --- | --- |
| 1 | 2 |

## Sign-ins during a burst of sign-ups

Hand-written.

## Hostile uploads

Old hostile figures.
"""


def test_only_its_own_section_is_replaced() -> None:
    new = replace_section(DOC, "## Faults under load\n\nNew figures.\n")
    assert new == DOC.replace("Old figures.\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n", "New figures.\n")


def test_the_last_section_is_replaced_to_the_end() -> None:
    new = replace_section(DOC, "## Hostile uploads\n\nNew.\n")
    assert new == DOC.replace("Old hostile figures.\n", "New.\n")


def test_a_missing_section_is_added_at_the_end() -> None:
    new = replace_section(DOC, "## Hostile load\n\nFigures.\n")
    assert new == DOC + "\n## Hostile load\n\nFigures.\n"


def test_the_heading_must_be_a_whole_line() -> None:
    # "## Hostile uploads" must not match inside "### Hostile uploads, again", nor "## Hostile" match it.
    doc = "# T\n\n### Hostile uploads, again\n\nkept\n\n## Hostile uploads\n\nold\n"
    assert replace_section(doc, "## Hostile uploads\n\nnew\n") == doc.replace("old", "new")
    assert replace_section(doc, "## Hostile\n\nx\n") == doc + "\n## Hostile\n\nx\n"


def test_replacing_twice_changes_nothing_more() -> None:
    once = replace_section(DOC, "## Sign-ins during a burst of sign-ups\n\nRewritten.\n\n\n")
    assert replace_section(once, "## Sign-ins during a burst of sign-ups\n\nRewritten.\n") == once
    assert "## Hostile uploads\n\nOld hostile figures.\n" in once


def test_a_new_file_holds_the_section(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "reliability.md"
    write_section(path, "## Faults under load\n\nFigures.\n")
    write_section(path, "## Hostile load\n\nMore.\n")
    assert path.read_text() == "## Faults under load\n\nFigures.\n\n## Hostile load\n\nMore.\n"
