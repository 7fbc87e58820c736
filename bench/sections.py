"""Each bench writes its own section of a document (docs/reliability.md) and leaves the rest as it is:
the hand-written sections, and the other benches' figures."""

from __future__ import annotations

from pathlib import Path

HEADINGS = ("# ", "## ")  # what ends a section: the next heading of its level or above


def replace_section(text: str, section: str) -> str:
    """`text` with the section titled by `section`'s first line (a `## ` heading, matched as a whole line)
    replaced by `section`: from that heading to the next `# ` or `## ` heading, or to the end. A section
    not there yet is added at the end."""
    title = section.splitlines()[0].rstrip()
    body = section.rstrip("\n") + "\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + body if text.strip() else body
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(HEADINGS)), len(lines))
    following = "".join(lines[end:])
    return "".join(lines[:start]) + body + ("\n" + following if following else "")


def write_section(path: Path, section: str) -> None:
    """`replace_section` on a file (created if missing)."""
    text = path.read_text() if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, section))
