"""Small previews of stored originals for the pages, made once and kept beside the originals. Rendered
in app/sandbox.py's processes, like every decode of uploaded bytes."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from PIL import Image

from app import images

THUMBNAIL_SIZE = 384  # longest side, in pixels: sharp at the sizes the pages show, a few tens of kB
DRAFT = THUMBNAIL_SIZE * 2  # a large JPEG is decoded at a fraction of its size, no smaller than this
MEDIA_TYPE = "image/webp"
_SUBDIR = "thumbs"


def thumbnail_path(upload_dir: Path, sha256: str) -> Path:
    return upload_dir / _SUBDIR / sha256[:2] / f"{sha256}-{THUMBNAIL_SIZE}.webp"


def preview(data: bytes, max_pixels: int, max_cost: int) -> bytes:
    """The preview of an original, as WebP bytes. Raises images.ImageRejected if it no longer passes."""
    small = images.first_frame(_opened(data, max_pixels, max_cost))
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    if small.mode not in {"RGB", "RGBA"}:
        small = small.convert("RGBA" if "transparency" in small.info or "A" in small.mode else "RGB")
    buffer = io.BytesIO()
    small.save(buffer, format="WEBP", quality=80)
    return buffer.getvalue()


def _opened(data: bytes, max_pixels: int, max_cost: int) -> Image.Image:
    with contextlib.suppress(images.ImageRejected):
        return images.open_image(data, max_pixels, max_cost, draft=DRAFT)
    # A JPEG drafted to DRAFT may decode at a larger scale than its upload's check drafted it to (SIZE): over
    # the decode budget the upload passed within. Its preview is then made from that smaller draft (any other
    # refusal is met again). Opened only here, once the first try is let go of: a WebP holds its decoder's
    # canvas from the moment it is opened, and two of them could exceed the process's memory limit.
    return images.open_image(data, max_pixels, max_cost)
