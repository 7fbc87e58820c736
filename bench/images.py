"""Distinct generated images for the load tests and benchmarks (no locust here: it monkey-patches)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SIZE = 256
CELL = 32  # 8 x 8 cells of 32 px: JPEG cannot blur a cell into its neighbour, so the bits survive
BITS = (SIZE // CELL) ** 2


def make_image(seed: int) -> bytes:
    """A small JPEG whose pixels spell out `seed` (below 2**64) in black and white cells, so distinct
    seeds give distinct files and the result cache hides no model work. A single changed pixel would
    not do: JPEG's quantisation often erases it and two seeds then share one file."""
    if not 0 <= seed < 2**BITS:
        raise ValueError(f"seed {seed} does not fit in {BITS} bits")
    bits = (np.uint64(seed) >> np.arange(BITS, dtype=np.uint64)) & np.uint64(1)
    cells = (bits.reshape(SIZE // CELL, SIZE // CELL) * 255).astype(np.uint8)
    gray = np.kron(cells, np.ones((CELL, CELL), np.uint8))
    pixels = np.stack([gray, np.full_like(gray, seed % 251), 255 - gray], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
