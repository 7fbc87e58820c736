"""Small previews of stored originals for the pages, made once and kept beside the originals."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

from app.files import write_atomic

THUMBNAIL_SIZE = 384  # longest side, in pixels: sharp at the sizes the pages show, a few tens of kB
MEDIA_TYPE = "image/webp"
_SUBDIR = "thumbs"


def thumbnail_path(upload_dir: Path, sha256: str) -> Path:
    return upload_dir / _SUBDIR / sha256[:2] / f"{sha256}-{THUMBNAIL_SIZE}.webp"


def _render(original: Path) -> bytes:
    with Image.open(original) as image:
        if image.format == "JPEG":
            image.draft(
                "RGB", (THUMBNAIL_SIZE * 2, THUMBNAIL_SIZE * 2)
            )  # decode a large photo at a fraction of its size
        image.seek(0)  # first frame of an animation
        small = ImageOps.exif_transpose(image) or image
        small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
        if small.mode not in {"RGB", "RGBA"}:
            small = small.convert("RGBA" if "transparency" in small.info or "A" in small.mode else "RGB")
        buffer = io.BytesIO()
        small.save(buffer, format="WEBP", quality=80)
        return buffer.getvalue()


def thumbnail(upload_dir: Path, sha256: str, relative_path: str) -> bytes:
    """The preview of an original (blocking: call it in a thread). FileNotFoundError if the original is gone."""
    cached = thumbnail_path(upload_dir, sha256)
    if cached.exists():
        return cached.read_bytes()
    data = _render(upload_dir / relative_path)
    write_atomic(cached, data)
    return data
