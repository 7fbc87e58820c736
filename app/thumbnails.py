"""Small previews of stored originals for the pages, made once and kept beside the originals. Rendered
in app/sandbox.py's processes, like every decode of uploaded bytes."""

from __future__ import annotations

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


def render_thumbnail(image: Image.Image) -> bytes:
    """The preview of an image opened by images.open_image (with draft=DRAFT), as WebP bytes."""
    small = images.first_frame(image)
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    if small.mode not in {"RGB", "RGBA"}:
        small = small.convert("RGBA" if "transparency" in small.info or "A" in small.mode else "RGB")
    buffer = io.BytesIO()
    small.save(buffer, format="WEBP", quality=80)
    return buffer.getvalue()
