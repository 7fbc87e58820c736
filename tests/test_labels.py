"""The shipped ImageNet class list: Keras's output order, and the lookups the API uses."""

from __future__ import annotations

import pytest

from app.labels import LABELS, Label, find, search


def test_thousand_classes_in_keras_order() -> None:
    assert len(LABELS) == 1000
    assert [x.index for x in LABELS] == list(range(1000))
    wnids = [x.wnid for x in LABELS]
    assert len(set(wnids)) == 1000
    assert wnids == sorted(wnids)  # Keras's ResNet50 outputs follow the sorted WordNet ids


def test_names_are_unique_and_non_empty() -> None:
    names = [x.name.casefold() for x in LABELS]
    assert all(names)
    assert len(set(names)) == 1000


@pytest.mark.parametrize(
    ("index", "wnid", "name"),
    [
        (0, "n01440764", "tench"),
        (1, "n01443537", "goldfish"),
        (207, "n02099601", "Golden Retriever"),
        (281, "n02123045", "tabby cat"),
        (954, "n07753592", "banana"),
        (999, "n15075141", "toilet paper"),
    ],
)
def test_known_indices(index: int, wnid: str, name: str) -> None:
    assert LABELS[index] == Label(index=index, wnid=wnid, name=name)


def test_colliding_clean_names_are_told_apart() -> None:
    # The curated names call 657/744 both "missile" and 836/837 both "sunglasses".
    assert {LABELS[657].name, LABELS[744].name} == {"missile", "projectile"}
    assert {LABELS[836].name, LABELS[837].name} == {"sunglass", "sunglasses"}


def test_find_by_wnid_or_name_ignoring_case() -> None:
    tench = LABELS[0]
    assert find("n01440764") == tench
    assert find("N01440764") == tench
    assert find("tench") == tench
    assert find("  TENCH ") == tench
    assert find("golden retriever") == LABELS[207]


def test_find_is_exact() -> None:
    assert find("tenc") is None
    assert find("") is None
    assert find("no such class") is None


def test_search_is_case_insensitive_substring() -> None:
    assert search("CAT") == search("cat")
    found = search("cat", limit=100)
    assert found and all("cat" in x.name.casefold() for x in found)
    assert LABELS[281] in found  # tabby cat: a word of the name
    assert LABELS[143] in found  # oystercatcher: inside a word


# Written out by hand from the rule (names starting with the query, then names with a word starting with it,
# then names containing it; class order within each), not from the code's own ranking.
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "cat",
            [
                "catamaran",  # 484: the name starts with it
                "tabby cat",  # 281-284: a word does
                "a cat having a striped coat",
                "Persian cat",
                "Siamese cat",
                "oystercatcher",  # 143, 358: inside a word
                "European polecat",
            ],
        ),
        (
            "horn",
            [
                "hornbill",
                "Saharan horned viper",
                "French horn",
                "longhorn beetle",
                "bighorn sheep",
                "stinkhorn mushroom",
            ],
        ),
        (
            "SEA ",
            [
                "sea snake",
                "sea anemone",
                "sea slug",
                "sea lion",
                "Sealyham Terrier",
                "sea urchin",
                "sea cucumber",
                "seat belt",
                "loggerhead sea turtle",  # 33, 34, 861: a later word
                "leatherback sea turtle",
                "toilet seat",
            ],
        ),
        ("tiger", ["tiger shark", "tiger", "tiger beetle"]),  # all prefixes: class order (3, 292, 300)
    ],
)
def test_search_puts_prefix_matches_first(query: str, expected: list[str]) -> None:
    assert [x.name for x in search(query, limit=100)] == expected
    assert [x.name for x in search(query, limit=3)] == expected[:3]


def test_search_by_wnid() -> None:
    assert search("n01440764") == [LABELS[0]]
    assert LABELS[0] in search("n0144")


def test_search_limit_and_empty_query() -> None:
    assert search("") == list(LABELS[:20])
    assert search("   ", limit=5) == list(LABELS[:5])
    assert len(search("a", limit=7)) == 7
    assert search("a", limit=0) == []
    assert search("zzzz-no-such-class") == []
