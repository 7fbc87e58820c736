"""Reading uploaded files out of a multipart form: one image, several, a folder's or a zip archive."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from litestar.datastructures import UploadFile
from litestar.exceptions import ClientException

from app.archives import Upload, is_archive
from app.text import clean_file_name, visible_only


@dataclass
class UploadForm:
    """The classify form: `files` holds one image, several, a folder's or a zip; `file` is its older name.

    Untyped on purpose: a browser sends an empty file input as a text part (""), which a list of files would
    refuse, failing the whole form. `read_parts` sorts the parts out and explains any problem."""

    file: Any = None
    files: Any = None


async def read_parts(parts: Any, name: str) -> list[Upload]:
    """The file parts of a multipart field (one part or several) as uploads; 400 for a text part."""
    listed = parts if isinstance(parts, list) else [parts]
    # An empty file input arrives as an empty text part: nothing was chosen there.
    listed = [part for part in listed if part is not None and part != ""]
    # Multipart parsing does not check that these parts are files: a plain text part would be a str.
    if not all(isinstance(part, UploadFile) for part in listed):
        raise ClientException(f"`{name}` must be file parts")
    uploads = []
    for i, part in enumerate(listed):
        data = await part.read()
        if part.filename or data:  # some clients send an empty file input as a file part without name or bytes
            uploads.append(Upload(part.filename or f"file-{i}", data))
    return uploads


def is_collection(chosen: list[Upload]) -> bool:
    """One image is classified in place; several, or an archive, become a collection."""
    return len(chosen) > 1 or (len(chosen) == 1 and is_archive(chosen[0]))


def collection_name(chosen: list[Upload]) -> str:
    """The name of the zip or the folder chosen, if that is what it was; else none. Without the invisible
    characters a typed name may not have (a zero-width joiner in an emoji, a soft hyphen): kept, they had
    the whole upload refused for a name the person never typed."""
    if len(chosen) == 1:
        return visible_only(clean_file_name(PurePosixPath(chosen[0].name).stem))
    folders = {PurePosixPath(u.name).parts[0] if "/" in u.name else "" for u in chosen}
    return visible_only(clean_file_name(folders.pop())) if len(folders) == 1 else ""
