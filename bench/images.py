"""Distinct generated images for the load tests and benchmarks (no locust here: it monkey-patches)."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

PHOTO = (640, 480)  # the benchmarks' photo: what a phone's "small" setting or a web page's photo is
GRID = 8  # 8 x 8 cells: JPEG cannot blur a cell into its neighbour, so the bits survive
BITS = GRID * GRID


@functools.cache
def _texture(width: int, height: int) -> np.ndarray:
    """Fine grain and a soft gradient, the same for every image: a photo's entropy (its JPEG is about as
    large and as costly to decode as a photo's) without making each image slower to generate."""
    rng = np.random.default_rng(0)
    grain = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
    ramp = (np.arange(width, dtype=np.int16)[None, :, None] * 60 // max(width, 1)).repeat(height, axis=0)
    return grain + ramp


def make_image(seed: int, size: tuple[int, int] = PHOTO) -> bytes:
    """A photo-like JPEG (640 x 480 unless `size` says otherwise) whose pixels spell out `seed` (below
    2**64) in black and white cells, so distinct seeds give distinct files and the result cache hides no
    model work. A single changed pixel would not do: JPEG's quantisation often erases it and two seeds
    then share one file."""
    if not 0 <= seed < 2**BITS:
        raise ValueError(f"seed {seed} does not fit in {BITS} bits")
    width, height = size
    bits = (np.uint64(seed) >> np.arange(BITS, dtype=np.uint64)) & np.uint64(1)
    cells = (bits.reshape(GRID, GRID) * 160 + 40).astype(np.int16)
    rows = np.arange(height) * GRID // height
    columns = np.arange(width) * GRID // width
    gray = cells[rows][:, columns][:, :, None]
    tint = np.array([0, seed % 251 - 125, 0], dtype=np.int16) // 4
    pixels = np.clip(gray + tint + _texture(width, height), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@functools.cache
def _base_photo(size: tuple[int, int]) -> bytes:
    return make_image(0, size)


def distinct_photo(seed: int, size: tuple[int, int] = PHOTO) -> bytes:
    """A new file of the same photo for each `seed`: the seed in a JPEG comment (COM segment) after the start
    marker. Distinct bytes are a distinct hash, so the result cache hides no model work, and the decode costs
    what a photo's does; generating it costs microseconds, where drawing a new photo costs about 20 ms of CPU
    here, which a load generator on the same machine would take from the system it measures."""
    base = _base_photo(size)
    comment = f"seed {seed}".encode()
    return base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]
