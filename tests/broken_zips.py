"""Zip archives broken in every way a hostile or damaged upload can be, made at test time: each has good
images around one bad entry, `bad.png` (or as named), and the reason the service must give for it."""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable

from tests import samples

LOCAL = b"PK\x03\x04"
CENTRAL = b"PK\x01\x02"
BAD = "bad.png"


def _good() -> dict[str, bytes]:
    return {"good-1.png": samples.photo(9100, fmt="PNG"), "good-2.png": samples.photo(9101, fmt="PNG")}


def _headers(data: bytes, name: str) -> tuple[int, int]:
    """Offsets of `name`'s local header and of its central directory record."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    local = archive.getinfo(name).header_offset
    central = archive.start_dir
    while data[central : central + 4] == CENTRAL:
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[central + 28 : central + 34])
        if data[central + 46 : central + 46 + name_len] == name.encode():
            return local, central
        central += 46 + name_len + extra_len + comment_len
    raise ValueError(name)


def _patch(data: bytes, at: int, fmt: str, value: int) -> bytes:
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt) :]


def _both(data: bytes, local_at: int, central_at: int, fmt: str, value: int, name: str = BAD) -> bytes:
    """Change one field in the entry's local header and its central directory record alike."""
    local, central = _headers(data, name)
    return _patch(_patch(data, local + local_at, fmt, value), central + central_at, fmt, value)


def _with_bad(data: bytes | None = None) -> bytes:
    return samples.zipped(_good() | {BAD: data or samples.photo(9102, fmt="PNG")})


def encrypted() -> bytes:
    data = _with_bad()
    _, central = _headers(data, BAD)
    flags = struct.unpack("<H", data[central + 8 : central + 10])[0] | 0x1
    return _both(data, 6, 8, "<H", flags)


def unsupported_compression() -> bytes:
    return _both(_with_bad(), 8, 10, "<H", 99)  # 99: AES, which zipfile cannot read


def bad_crc() -> bytes:
    data = _with_bad()
    archive = zipfile.ZipFile(io.BytesIO(data))
    return _both(data, 14, 16, "<I", archive.getinfo(BAD).CRC ^ 0xFFFF)


def size_understated() -> bytes:
    """The entry's data runs on past the size its headers state."""
    data = _with_bad()
    size = zipfile.ZipFile(io.BytesIO(data)).getinfo(BAD).file_size
    return _both(data, 22, 24, "<I", size // 2)


def size_overstated() -> bytes:
    data = _with_bad()
    size = zipfile.ZipFile(io.BytesIO(data)).getinfo(BAD).file_size
    return _both(data, 22, 24, "<I", size + 1000)


def corrupt_deflate() -> bytes:
    data = _with_bad()
    local, _ = _headers(data, BAD)
    name_len, extra_len = struct.unpack("<HH", data[local + 26 : local + 30])
    start = local + 30 + name_len + extra_len
    return data[:start] + b"\xff" + data[start + 1 :]  # final block of the reserved type 3: invalid


def _compressed_with(compression: int) -> bytes:
    """The bad entry compressed with `compression` (LZMA, bzip2), which zipfile expands with no bound."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in _good().items():
            archive.writestr(name, data)
        archive.writestr(BAD, samples.photo(9102, fmt="PNG"), compress_type=compression)
    return buffer.getvalue()


def lzma() -> bytes:
    return _compressed_with(zipfile.ZIP_LZMA)


def bzip2() -> bytes:
    return _compressed_with(zipfile.ZIP_BZIP2)


def from_the_future() -> bytes:
    """A whole archive whose directory asks for a zip version Python's zipfile does not read (9.9)."""
    data = _with_bad()
    _, central = _headers(data, BAD)
    return _patch(data, central + 6, "<H", 99)


def name_mismatch() -> bytes:
    data = _with_bad()
    local, _ = _headers(data, BAD)
    at = local + 30
    return data[:at] + b"sad.png" + data[at + len(BAD) :]


def nested_archive() -> bytes:
    return samples.zipped(_good() | {"inner.zip": samples.zipped({"x.png": samples.photo(9103, fmt="PNG")})})


def nested_by_content() -> bytes:
    return samples.zipped(_good() | {BAD: samples.zipped({"x.png": samples.photo(9104, fmt="PNG")})})


def link() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in _good().items():
            archive.writestr(name, data)
        info = zipfile.ZipInfo(BAD)
        info.external_attr = 0o120777 << 16  # a symbolic link, to /etc/passwd
        archive.writestr(info, b"/etc/passwd")
    return buffer.getvalue()


def not_an_image() -> bytes:
    return samples.zipped(_good() | {BAD: b"just some text, not an image"})


# Each broken shape, the name of its bad entry, and words its reason must hold.
SHAPES: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "encrypted": (encrypted, BAD, "Encrypted"),
    "unsupported-compression": (unsupported_compression, BAD, "Unsupported compression"),
    "bad-crc": (bad_crc, BAD, "Bad CRC"),
    "size-understated": (size_understated, BAD, "Size mismatch"),
    "size-overstated": (size_overstated, BAD, "Size mismatch"),
    "corrupt-deflate": (corrupt_deflate, BAD, "Corrupt data"),
    "lzma": (lzma, BAD, "Unsupported compression"),
    "bzip2": (bzip2, BAD, "Unsupported compression"),
    "name-mismatch": (name_mismatch, BAD, "Name mismatch"),
    "nested-archive": (nested_archive, "inner.zip", "nested archive"),
    "nested-by-content": (nested_by_content, BAD, "nested archive"),
    "link": (link, BAD, "A link"),
    "not-an-image": (not_an_image, BAD, "Not a supported image"),
}
