"""The test images themselves: a seed names one image, so that tests do not share originals by accident."""

from __future__ import annotations

from tests import samples


def test_photos_of_seeds_256_apart_differ() -> None:
    """JPEG lost the pixel that held the seed's higher bits: seeds 256 apart made the same bytes, so a test's
    "new" image was another test's original already (test_an_upload_of_an_original_a_refused_one_removes_keeps_it
    failed after the tests that had stored it)."""
    seeds = [98, 354, 610, 866, 19_982, 20_238, 20_494, 20_750]
    assert len({samples.photo(seed) for seed in seeds}) == len(seeds)
    assert len({samples.photo(seed, (64, 48)) for seed in seeds}) == len(seeds)
