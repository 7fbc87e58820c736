"""Reading zip archives of images safely. The whole archive is judged from its central directory before
anything is extracted (how many entries, how many bytes once expanded, how much each expands, unsafe
names); then each entry is read on its own, stopping at the size its header states, and one that cannot
be read is reported with its reason while the rest go on. No name in an archive is ever used as a path."""

from __future__ import annotations

import io
import lzma
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from litestar.exceptions import ClientException, HTTPException

from app import text

# A zip entry that expands more than this many times over is treated as a bomb.
MAX_COMPRESSION_RATIO = 200
# Archive entries that are not images of the user's: macOS resource forks, hidden files.
SKIPPED_PREFIXES = ("__MACOSX/", ".")
# How a zip archive starts (a local file header, or the end record of an empty archive).
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# A central directory's record (46 bytes, then its name, extra field and comment) and the records at its
# end: the classic one (within its comment's 64 KiB of the end of the archive) and, just before it in a
# ZIP64 archive, the ZIP64 record and its locator.
CENTRAL = struct.Struct("<4s6H3I5HII")
END = struct.Struct("<4s4H2IH")
END64_LOCATOR = struct.Struct("<4sIQI")
END64 = struct.Struct("<4sQ2H2I4Q")
# An archive's directory may list folders too, up to as many as the files it may hold.
RECORDS_PER_FILE = 2
# Compression methods read; anything else (bzip2, LZMA, AES, PPMd, ...) is refused per entry. zipfile
# expands a bzip2 or LZMA chunk whole, with no bound: 785 bytes of bzip2 became 1 GiB in the web process.
CHUNK = 64 * 1024
READABLE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
# A Windows drive's root ('C:\\x', 'c:/x', 'C:'), absolute as '/x' is; 'a:b.jpg' is a name (never a path here).
DRIVE_ROOT = re.compile(r"[A-Za-z]:([/\\]|$)")


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


class CollectionRejected(ClientException):
    """The whole request is refused (too many files, an unsafe or oversized archive)."""


class EntryUnreadable(Exception):
    """One entry of an archive cannot be read; the message says why, for the user."""


def refuse(detail: str, status: int = 400) -> HTTPException:
    return CollectionRejected(detail=detail, status_code=status)


def skipped(name: str) -> bool:
    """Files that are not the user's images: resource forks and hidden files (.DS_Store), in archives and folders."""
    return name.startswith(SKIPPED_PREFIXES) or PurePosixPath(name).name.startswith(".")


def is_archive(upload: Upload) -> bool:
    """A zip archive, by its content or, failing that, by its name (so a broken one is reported as a zip)."""
    return upload.data.startswith(ZIP_MAGIC) or upload.name.lower().endswith(".zip")


def _unsafe(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return name.startswith(("/", "\\")) or ".." in path.parts or DRIVE_ROOT.match(name) is not None


def _open_zip(source: bytes | IO[bytes]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:  # a version 9.9
        raise refuse(f"Not a readable zip archive: {exc}") from exc


def images_in(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The entries that are meant as images: not folders, not hidden files, in the directory's order."""
    return [e for e in archive.infolist() if not e.is_dir() and not skipped(e.filename)]


def _directory(data: bytes) -> tuple[int, int] | None:
    """Where the central directory starts and ends, as its end record says (ZIP64's where there is one);
    None where there is no end record (zipfile then says what is wrong)."""
    end_at = _end_record(data)
    if end_at < 0:
        return None
    size, stop = END.unpack_from(data, end_at)[5], end_at
    locator_at = end_at - END64_LOCATOR.size
    end64_at = locator_at - END64.size
    if (
        end64_at >= 0
        and data[locator_at : locator_at + 4] == b"PK\x06\x07"
        and data[end64_at : end64_at + 4] == b"PK\x06\x06"
    ):
        size, stop = END64.unpack_from(data, end64_at)[8], end64_at
    return max(stop - size, 0), stop


def _end_record(data: bytes) -> int:
    """Where the end record is, found as zipfile finds it (or -1): at the very end if it is there, with no
    comment, else the last one within a comment's reach. Found otherwise, a record whose directory
    offset holds the end record's own signature hid a directory that zipfile still read whole."""
    if data[-END.size : -END.size + 4] == ZIP_MAGIC[1] and data[-2:] == b"\x00\x00":
        return len(data) - END.size
    end_at = data.rfind(ZIP_MAGIC[1], max(0, len(data) - END.size - (1 << 16)))
    return end_at if 0 <= end_at <= len(data) - END.size else -1


def listed_records(data: bytes, most: int) -> int:
    """How many records the central directory lists, counted up to one past `most` and no further:
    zipfile builds an object for every record before anything can be judged (a directory of 11 million
    folders, 46 bytes each, took a web process to 5.1 GB)."""
    found, count = _directory(data), 0
    at, stop = found or (0, 0)
    while count <= most and at + CENTRAL.size <= stop and data[at : at + 4] == b"PK\x01\x02":
        name, extra, comment = CENTRAL.unpack_from(data, at)[10:13]  # their lengths: they follow the 46 bytes
        at += CENTRAL.size + name + extra + comment
        count += 1
    return count


def check_zip(data: bytes, max_files: int, max_bytes: int) -> list[zipfile.ZipInfo]:
    """The image entries of an archive, once its central directory passes every limit (nothing is
    extracted): the number of records, folders and skipped files included (`listed_records`), their names;
    the number of images, their expanded size, how much each expands. Skipped files (a Mac's resource
    forks) are never read: counted, a Mac's zip of 6 photos was 413 at 10 ("The archive has 12 files")."""
    most = RECORDS_PER_FILE * max_files
    if listed_records(data, most) > most:
        raise refuse(f"The archive lists more than {most} entries, files and folders, the most accepted", 413)
    entries = [e for e in _open_zip(data).infolist() if not e.filename or not e.is_dir()]
    if any(not e.filename for e in entries):  # zipfile's `is_dir` raises IndexError on a name of none
        raise refuse("The archive has an entry with no name (or a name that starts with a NUL)")
    if unsafe := [e.filename for e in entries if _unsafe(e.filename)]:
        raise refuse(f"The archive has unsafe paths (absolute or with '..'): {unsafe[0]!r}")
    images = [e for e in entries if not skipped(e.filename)]
    if len(images) > max_files:
        raise refuse(f"The archive has {len(images)} images; at most {max_files} are accepted", 413)
    total = sum(e.file_size for e in images)
    if total > max_bytes:
        raise refuse(f"The archive expands to {total} bytes; at most {max_bytes}", 413)
    for entry in images:
        if entry.file_size > MAX_COMPRESSION_RATIO * max(entry.compress_size, 1):
            ratio = entry.file_size // max(entry.compress_size, 1)
            raise refuse(f"{entry.filename!r} expands {ratio}x (at most {MAX_COMPRESSION_RATIO}x): a zip bomb?")
    return images


def wanted(uploads: list[Upload]) -> list[Upload]:
    """The uploads meant as images (or archives of them), as they will be packed and read: hidden files
    and resource forks left out, as in an archive, and no name ending in '/', which a zip takes for a
    folder's, nor with control characters (a zip cuts a name at a NUL: 'x/\\0y.jpg' became a folder)."""
    named = [Upload(text.clean_file_name(u.name).rstrip("/") or "file", u.data) for u in uploads]
    return [u for u in named if not skipped(u.name)]


def count_images(uploads: list[Upload], max_files: int, max_bytes: int) -> tuple[int, int]:
    """How many images the uploads (`wanted`) hold, and their bytes once expanded, each zip archive judged
    from its central directory; 413 past `max_files` images, `max_bytes`, or RECORDS_PER_FILE x
    `max_files` directory records, for all of them together. Counting stops at the first upload that goes
    past: given the whole bound each, 8 zips of 10,000 entries were all parsed before the 413."""
    count, used, records, most = 0, 0, 0, RECORDS_PER_FILE * max_files
    for upload in uploads:
        if is_archive(upload):
            records += listed_records(upload.data, most - records)
            if records > most:
                raise refuse(f"The archives list more than {most} entries, files and folders, the most accepted", 413)
            entries = check_zip(upload.data, max_files, max(max_bytes - used, 0))
            count += len(entries)
            used += sum(e.file_size for e in entries)
        else:
            count += 1
            used += len(upload.data)
        if count > max_files:
            raise refuse(f"At most {max_files} images in one collection; this one has more", 413)
        if used > max_bytes:
            raise refuse(f"The collection expands to more than {max_bytes} bytes, the most accepted", 413)
    return count, used


def pack(uploads: list[Upload], out: IO[bytes]) -> None:
    """Write several uploads (`wanted`) to `out` as one stored (uncompressed) zip, to keep until they are
    read: the zip archives among them are opened when it is read (see `Reader`). Written straight out: made
    in memory first, it held a second copy of a collection's bytes (512 MB) beside the request's."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as packed:
        for upload in uploads:
            packed.writestr(zipfile.ZipInfo(upload.name), upload.data)


def _problem(entry: zipfile.ZipInfo) -> str | None:
    """Why an entry will not be read, from the central directory alone."""
    if entry.flag_bits & 0x1:
        return "Encrypted: the entry needs a password, which is not supported"
    if stat.S_ISLNK(entry.external_attr >> 16):
        return "A link, not an image: links in archives are not followed"
    if entry.compress_type not in READABLE_METHODS:
        return f"Unsupported compression (method {entry.compress_type}): use deflate or store"
    if entry.filename.lower().endswith(".zip"):
        return "A nested archive: archives inside archives are not opened"
    return None


def _data_offset(fp: IO[bytes], entry: zipfile.ZipInfo) -> int:
    """Where an entry's data starts: after its local header, whose name and extra field are its own."""
    fp.seek(entry.header_offset)
    name_len, extra_len = struct.unpack("<HH", fp.read(30)[26:30])
    return entry.header_offset + 30 + name_len + extra_len


def _longer_than_stated(archive: zipfile.ZipFile, entry: zipfile.ZipInfo) -> bool:
    """Whether a deflated entry's data runs on past its stated size (told apart from merely damaged
    data): inflate its raw bytes, a chunk at a time, until one byte more than stated comes, or none."""
    if entry.compress_type != zipfile.ZIP_DEFLATED or archive.fp is None:
        return False
    archive.fp.seek(_data_offset(archive.fp, entry))
    inflate, produced, left = zlib.decompressobj(-15), 0, entry.compress_size
    try:
        while left > 0 and produced <= entry.file_size:
            pending = archive.fp.read(min(CHUNK, left))
            if not pending:
                break
            left -= len(pending)
            while pending and produced <= entry.file_size:
                produced += len(inflate.decompress(pending, entry.file_size + 1 - produced))
                pending = inflate.unconsumed_tail
    except zlib.error:
        return False
    return produced > entry.file_size


def read_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """An entry's bytes, never more than its header states nor than `max_bytes` (an image's limit);
    EntryUnreadable with the reason otherwise."""
    if problem := _problem(entry):
        raise EntryUnreadable(problem)
    if entry.file_size > max_bytes:
        raise EntryUnreadable(f"Too large: {entry.file_size} bytes, where one image may have at most {max_bytes}")
    if entry.compress_type == zipfile.ZIP_STORED and entry.compress_size != entry.file_size:
        raise EntryUnreadable("Size mismatch: the entry's stated sizes disagree")
    try:
        with archive.open(entry) as member:
            content = member.read(entry.file_size + 1)
    except zipfile.BadZipFile as exc:
        if "differ" in str(exc):
            raise EntryUnreadable("Name mismatch: the entry's name differs in the directory and its header") from exc
        if "CRC" in str(exc) and _longer_than_stated(archive, entry):
            raise EntryUnreadable("Size mismatch: the entry holds more data than its header says") from exc
        if "CRC" in str(exc):
            raise EntryUnreadable("Bad CRC: the entry's data is damaged") from exc
        raise EntryUnreadable(f"Corrupt data: {exc}") from exc
    except NotImplementedError as exc:
        raise EntryUnreadable(f"Unsupported compression: {exc}") from exc
    except RuntimeError as exc:  # zipfile's "is encrypted, password required", from the local header
        raise EntryUnreadable("Encrypted: the entry needs a password, which is not supported") from exc
    except (zlib.error, lzma.LZMAError, EOFError, OSError, ValueError) as exc:  # bzip2's is an OSError
        raise EntryUnreadable(f"Corrupt data: {exc}") from exc
    if len(content) != entry.file_size:
        raise EntryUnreadable(f"Size mismatch: {len(content)} bytes where the header says {entry.file_size}")
    if content.startswith(ZIP_MAGIC[0]):
        raise EntryUnreadable("A nested archive: archives inside archives are not opened")
    return content


class Window(io.RawIOBase):
    """A stretch of a file, read in place as a file of its own. A packed archive's zip is opened on one:
    opened as a member (`ZipFile.open`), every seek back read it again from its start, so a zip whose
    directory lists its entries backwards after a large hidden entry cost entries x size to read."""

    def __init__(self, file: io.BufferedReader, start: int, size: int) -> None:
        super().__init__()
        self._file, self._start, self._size, self._at = file, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = max(base + offset, 0)
        return self._at

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._size - self._at)
        if wanted <= 0:
            return 0
        self._file.seek(self._start + self._at)
        got = self._file.readinto(memoryview(buffer)[:wanted])
        self._at += got
        return got


class Reader:
    """The images of a stored collection, one at a time, in a fixed order (so reading can resume at any
    index). A user's archive is read as it is; packed uploads (`pack`) are read with their zip archives
    opened, one level deep."""

    def __init__(self, path: Path, packed: bool, max_entry_bytes: int) -> None:
        self.max_entry_bytes = max_entry_bytes
        self._file = path.open("rb")
        top = _open_zip(self._file)
        self.entries: list[tuple[zipfile.ZipFile, zipfile.ZipInfo]] = []
        for entry in images_in(top):
            inner = self._open_inner(top, entry) if packed and self._is_zip(top, entry) else None
            if inner is not None:
                self.entries += [(inner, e) for e in images_in(inner)]
            else:
                self.entries.append((top, entry))

    @staticmethod
    def _is_zip(top: zipfile.ZipFile, entry: zipfile.ZipInfo) -> bool:
        try:
            with top.open(entry) as member:
                return member.read(4) in ZIP_MAGIC or entry.filename.lower().endswith(".zip")
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, RuntimeError):
            return False  # damaged on disk since it was checked: reading the entry says so, and the rest go on

    def _open_inner(self, top: zipfile.ZipFile, entry: zipfile.ZipInfo) -> zipfile.ZipFile | None:
        try:
            if entry.compress_type != zipfile.ZIP_STORED:  # `pack` stores; gone bad on disk since
                return None
            return zipfile.ZipFile(Window(self._file, _data_offset(self._file, entry), entry.file_size))
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, struct.error):
            return None  # checked when it was uploaded; gone bad on disk since

    def __len__(self) -> int:
        return len(self.entries)

    def name(self, index: int) -> str:
        return self.entries[index][1].filename

    def read(self, index: int) -> bytes:
        archive, entry = self.entries[index]
        return read_entry(archive, entry, self.max_entry_bytes)

    def close(self) -> None:
        self._file.close()
