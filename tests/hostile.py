"""Hostile images, made at run time: each costs far more to decode than its size suggests.

Shared by the tests (tests/test_images.py, tests/test_sandbox.py, tests/web/test_hostile_images.py) and
`bench/hostile.py`. The large ones take a few hundred MB and a few seconds to make: `write_all` makes
them in a child process, so the process that measures its own memory never holds them decoded.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, rows: Callable[[zlib._Compress], bytes], extra: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    compressor = zlib.compressobj(9)
    body = rows(compressor) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def huge_png(side: int = 7999) -> bytes:
    """A real side x side greyscale PNG (every row present, all zero): about 60 kB."""
    row = b"\x00" * (side + 1)  # filter byte, then the pixels

    def rows(compressor: zlib._Compress) -> bytes:
        return b"".join(compressor.compress(row) for _ in range(side))

    return _png(side, side, rows)


def text_bomb_png(megabytes: int = 60) -> bytes:
    """A small, valid PNG whose zTXt chunk inflates to `megabytes` MB of text (compressed: about 60 kB)."""
    compressor = zlib.compressobj(9)
    block = b"A" * (1 << 20)
    text = b"".join(compressor.compress(block) for _ in range(megabytes)) + compressor.flush()
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + text)
    tiny = zlib.compress(b"\x00" + b"\x80" * 64)

    def rows(compressor: zlib._Compress) -> bytes:
        return compressor.compress(zlib.decompress(tiny) * 64)

    return _png(64, 64, rows, extra=ztxt)


def scan_bomb_jpeg(repeats: int = 3000, side: int = 4096) -> bytes:
    """A progressive JPEG whose last scan (its SOS segment and data: 33 bytes) is repeated `repeats`
    times: each repeat makes the decoder pass over every block of the image again."""
    image = Image.new("RGB", (side, side), (120, 130, 140))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", progressive=True, quality=30)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    return data[:last] + data[last:end] * repeats + data[end:]


def _gif(width: int, height: int, frames: int) -> bytes:
    """A GIF of `frames` frames on a width x height canvas, each frame one pixel: about 20 bytes a frame."""
    out = [b"GIF89a", struct.pack("<HHBBB", width, height, 0x80, 0, 0), b"\x00\x00\x00\xff\xff\xff"]
    out.append(b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00")  # loop forever
    pixel = b"\x02\x02\x44\x01\x00"  # LZW minimum code size 2, one sub-block: clear, index 1, end
    for i in range(frames):
        out.append(b"\x21\xf9\x04\x04\x01\x00\x00\x00")  # graphic control: 10 ms, keep the frame
        out.append(b"\x2c" + struct.pack("<HHHHB", i % width, (i // width) % height, 1, 1, 0) + pixel)
    out.append(b"\x3b")
    return b"".join(out)


def many_frame_gif(frames: int = 200_000, side: int = 1000) -> bytes:
    """Not refused: only the first frame is decoded (tests/test_sandbox.py)."""
    return _gif(side, side, frames)


def huge_gif(side: int = 7999) -> bytes:
    """A side x side GIF, every pixel encoded (LZW of one colour): Pillow decodes the whole canvas."""
    image = Image.new("P", (side, side), 0)
    image.putpalette([0, 0, 0, 255, 255, 255])
    buffer = io.BytesIO()
    image.save(buffer, format="GIF")
    return buffer.getvalue()


def huge_webp(side: int = 7999) -> bytes:
    """A side x side lossless WebP of one colour: a few kB, about 1 GB to decode with Pillow."""
    image = Image.new("RGB", (side, side), (30, 120, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", lossless=True, quality=0, method=0)
    return buffer.getvalue()


def webp_claiming(width: int, height: int) -> bytes:
    """huge_webp whose header (VP8L) claims width x height: what is judged before libwebp reserves its
    canvases, without encoding such an image (its pixels no longer decode)."""
    data = huge_webp(64)
    bits = int.from_bytes(data[21:25], "little") >> 28 << 28 | (width - 1) | (height - 1) << 14
    return data[:21] + bits.to_bytes(4, "little") + data[25:]


def slow_jpeg(side: int = 7999, repeats: int = 90) -> bytes:
    """A scan-bombed JPEG at the limit on scans (100) and within the cost budget (drafted to 1/8), on
    the largest canvas accepted: every check made from the header passes it, and decoding it takes about
    6 s here (5 to 7), so the time limit (5 s by default) stops most."""
    return scan_bomb_jpeg(repeats, side)


# Name -> (maker, file extension): the hostile images every check made from the header refuses.
MAKERS: dict[str, tuple[Callable[[], bytes], str]] = {
    "text_bomb_png": (text_bomb_png, "png"),
    "huge_png": (huge_png, "png"),
    "scan_bomb_jpeg": (scan_bomb_jpeg, "jpg"),
    "huge_gif": (huge_gif, "gif"),
    "huge_webp": (huge_webp, "webp"),
}
# And the ones only the limits of the decode processes stop.
SLOW_MAKERS: dict[str, tuple[Callable[[], bytes], str]] = {"slow_jpeg": (slow_jpeg, "jpg")}


def write_all(directory: Path, names: Iterable[str] = MAKERS) -> dict[str, Path]:
    """These hostile images (by default the MAKERS) as files in `directory`, each made once, in a child
    process (see the docstring)."""
    makers = MAKERS | SLOW_MAKERS
    paths = {name: directory / f"{name}.{makers[name][1]}" for name in names}
    missing = [name for name, path in paths.items() if not path.exists()]
    if missing:
        subprocess.run([sys.executable, "-m", "tests.hostile", str(directory), *missing], cwd=ROOT, check=True)
    return paths


def main() -> None:
    directory = Path(sys.argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    makers = MAKERS | SLOW_MAKERS
    for name in sys.argv[2:] or list(MAKERS):
        maker, extension = makers[name]
        path = directory / f"{name}.{extension}"
        partial = path.with_suffix(".partial")
        partial.write_bytes(maker())
        partial.rename(path)


if __name__ == "__main__":
    main()


def long_cmyk_jpeg() -> bytes:
    """A 1000 x 50000 CMYK JPEG (50 MP, under MAX_IMAGE_PIXELS): drafted to 224 for the model it decodes at
    1/4 scale (25 MB by decode_cost), drafted to 768 for its preview at full scale (381 MB, over the default
    DECODE_COST_MB of 192). About 2 MB; 200 MB to make."""
    image = Image.new("CMYK", (1000, 50_000), (10, 200, 30, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()
