"""Distinct generated images for the load tests and benchmarks (no locust here: it monkey-patches)."""

from __future__ import annotations

import io

from PIL import Image


def make_image(seed: int) -> bytes:
    """A small distinct JPEG per seed (its pixels encode the seed), so the result cache hides no work."""
    image = Image.new("RGB", (256, 256), (seed % 251, (seed // 251) % 251, (seed // 63001) % 251))
    image.putpixel((0, 0), (seed % 256, (seed >> 8) % 256, (seed >> 16) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
