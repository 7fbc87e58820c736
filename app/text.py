"""Checks of untrusted text (names, comments, file names): what may be stored and shown, and what is refused.

Control characters are refused everywhere: NUL breaks PostgreSQL text, the others hide or rewrite what a
person sees; so are the marks that reverse the direction of text, which make a name read as another (an
admin sees `photo<U+202E>gpj.exe` as `photoexe.jpg`). One-line fields refuse line breaks too; display names
also refuse invisible characters. File names, which are labels, lose control characters and direction marks
rather than being refused (the joiners some scripts and emoji need stay).
"""

from __future__ import annotations

import unicodedata

# Unicode categories nobody types on purpose: controls, format (zero-width, direction overrides),
# surrogates, private use, and line or paragraph separators.
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}
_LINE_BREAKS = {"\n", "\r"}
# The explicit direction marks, embeddings, overrides and isolates (Unicode's Bidi_Control).
_DIRECTION = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc"


def text_problem(value: str, what: str, *, multiline: bool = False) -> str | None:
    """Why `value` cannot be kept, or None. Tabs are allowed; line breaks only where `multiline`."""
    allowed = {"\t", *_LINE_BREAKS} if multiline else {"\t"}
    if any(is_control(c) and c not in allowed for c in value):
        return f"{what} must not contain control characters" + ("" if multiline else " or line breaks")
    if any(c in _DIRECTION for c in value):
        return f"{what} must not contain marks that change the direction of text"
    return None


def invisible_problem(value: str, what: str) -> str | None:
    """Why a name people will see cannot be kept: no control or invisible characters."""
    if any(unicodedata.category(c) in _INVISIBLE for c in value):
        return f"{what} must not contain control or invisible characters"
    return None


def visible_only(value: str) -> str:
    """`value` without the characters `invisible_problem` refuses: for a name made from a file's (a folder's,
    a zip's), which nobody typed, so nobody can be asked to change it."""
    return "".join(c for c in value if unicodedata.category(c) not in _INVISIBLE)


def clean_file_name(name: str, limit: int = 255) -> str:
    """A client's file name as a label (never a path): control characters and direction marks dropped, cut
    to `limit`."""
    return "".join(c for c in name if not is_control(c) and c not in _DIRECTION)[:limit]
