"""Images made on the fly for the tests: every format, mode and kind of bad file."""

from __future__ import annotations

import io
import random
import struct
import tarfile
import zipfile
import zlib

import pillow_heif
from PIL import Image

pillow_heif.register_heif_opener()  # so that `encode` writes HEIC (the app's options stay as app/images.py set them)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(seed: int = 0, size: tuple[int, int] = (320, 240), fmt: str = "JPEG") -> bytes:
    """A distinct image per seed (distinct bytes, so distinct hashes)."""
    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    for x in range(0, size[0], 16):
        image.paste(((x + seed) % 256, (seed * 7) % 256, x % 256), (x, 0, x + 8, size[1]))
    image.putpixel((0, 0), (seed % 256, (seed // 256) % 256, (seed // 65536) % 256))
    # JPEG loses that pixel, so seeds 256 apart made the same bytes (20,750 those of 19,982, 20,494, ...). The
    # bits past the first 8, as white 8 x 8 blocks along the second row of blocks, survive it; seeds under 256
    # are as they were.
    for bit in range(8, 24):
        if seed >> bit & 1:
            image.paste((255, 255, 255), (8 * (bit - 8), 8, 8 * (bit - 7), 16))
    return encode(image, fmt)


def noise(seed: int = 0, size: tuple[int, int] = (800, 600)) -> bytes:
    """A PNG of random pixels: as many bytes as pixels times 3 (nothing to compress), so slow to write."""
    pixels = random.Random(seed).randbytes(size[0] * size[1] * 3)
    return encode(Image.frombytes("RGB", size, pixels), "PNG")


def half_red_half_blue(size: tuple[int, int] = (300, 200)) -> Image.Image:
    """Left half red, right half blue: shows whether orientation and cropping were applied."""
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return image


def with_exif_orientation(image: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    """`image` with an EXIF orientation tag. A HEIC or AVIF carries it as its container's rotation and
    mirroring (pillow-heif and Pillow write it so, as phones do)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif.tobytes(), quality=95)


def claiming_size(data: bytes, width: int, height: int) -> bytes:
    """A HEIC or AVIF whose header (its `ispe` box) claims another size than its coded image: what the
    checks judge from the header, without encoding a large image (x265 takes 30 s for 24 MP). Only for an
    image coded at its own size (128x96 is): a crop box (`clap`) would cut the claimed size back."""
    at = data.index(b"ispe") + 8  # the box's type, then its version and flags
    return data[:at] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[at + 8 :]


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims a huge image: decoding it would take gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    data = photo(1, (640, 480))
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    data = bytearray(photo(2, fmt="PNG"))
    data[60:120] = b"\xff" * 60
    return bytes(data)


def zipped(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of these entries, written as given (unsafe names included, on purpose)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tarred(entries: dict[str, bytes]) -> bytes:
    """A tar archive of these entries (an archive format the service does not open)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in entries.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
