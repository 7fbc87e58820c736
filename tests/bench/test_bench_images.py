"""The load tests' generated images must all differ, or the result cache would hide model work."""

import hashlib
import io

import pytest
from PIL import Image

from bench.images import make_image


def test_consecutive_seeds_give_distinct_files() -> None:
    base = 1_795_000_000 << 20  # as the benchmark and the locustfile build their seeds
    digests = {hashlib.sha256(make_image(base + i)).digest() for i in range(500)}
    assert len(digests) == 500


def test_the_image_is_a_valid_jpeg() -> None:
    image = Image.open(io.BytesIO(make_image(12345)))
    assert (image.format, image.size, image.mode) == ("JPEG", (640, 480), "RGB")
    large = Image.open(io.BytesIO(make_image(12345, size=(4000, 3000))))
    assert large.size == (4000, 3000)


def test_a_seed_too_large_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        make_image(2**64)


def test_distinct_photos_are_distinct_valid_jpegs_of_the_same_photo() -> None:
    from bench.images import distinct_photo

    files = [distinct_photo(seed) for seed in (1, 2, 3)]
    assert len({hashlib.sha256(f).digest() for f in files}) == 3
    decoded = {Image.open(io.BytesIO(f)).tobytes() for f in files}
    assert len(decoded) == 1 and Image.open(io.BytesIO(files[0])).size == (640, 480)
