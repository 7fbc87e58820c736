"""The result fields the worker writes, from the model's top 5."""

from __future__ import annotations

from app import labels
from app.jobs.results import RESULT_FIELDS, result_fields

TOP = [(207, 0.912345678), (208, 0.05), (250, 0.02), (1, 0.01), (999, 0.005)]


def test_the_fields_name_the_classes_in_order() -> None:
    fields = result_fields(TOP, "keras-3")
    assert tuple(fields) == RESULT_FIELDS  # what an earlier result and the worker's message carry
    assert [t["label"] for t in fields["top5"]] == [labels.LABELS[i].name for i, _ in TOP]
    assert [t["score"] for t in fields["top5"]] == [0.912346, 0.05, 0.02, 0.01, 0.005]
    first = labels.LABELS[207]
    assert (fields["label"], fields["wnid"], fields["score"]) == (first.name, first.wnid, 0.912346)
    assert fields["model_version"] == "keras-3"
