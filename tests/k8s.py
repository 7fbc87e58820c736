"""deploy/k8s read in Python for tests/test_k8s.py: a small kustomize, resource quantities, and a CRD's schema
as the API server applies it.

The kustomize renders what deploy/k8s uses: `resources` (files and directories), `namespace` and `patches`
written as inline JSON 6902 operations. It refuses every other field, so a kustomization that outgrows it
fails loudly instead of being rendered wrong; tests/test_k8s.py compares its output with `kubectl kustomize`.

(No kustomize that reads a kustomization installs from PyPI for Python 3.11: pykustomize, a binding of the
Go one, needs Python 3.14, and the package named `kustomize` is another tool.)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches"}
PATCH_FIELDS = {"target", "patch"}
TARGET_FIELDS = {"kind", "name"}


class KustomizeError(ValueError):
    """A kustomization this renderer does not support, or a patch that does not apply."""


def documents(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[Object]:
    """The objects `kubectl kustomize directory` would print, in the order of the resources."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    if unknown := set(kustomization) - KUSTOMIZATION_FIELDS:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    objects: list[Object] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else documents(path)
    for patch in kustomization.get("patches", []):
        _patch_objects(objects, patch)
    if namespace := kustomization.get("namespace"):
        for obj in objects:
            obj["metadata"]["namespace"] = namespace
    return objects


def _patch_objects(objects: list[Object], patch: dict[str, Any]) -> None:
    if set(patch) != PATCH_FIELDS or set(patch["target"]) - TARGET_FIELDS:
        raise KustomizeError(f"unsupported patch (inline JSON 6902, by kind and name only): {patch}")
    target = patch["target"]
    matched = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
    if not matched:
        raise KustomizeError(f"the patch's target matches nothing: {target}")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise KustomizeError(f"only JSON 6902 patches (a list of operations) are supported: {target}")
    for obj in matched:
        for operation in operations:
            apply_operation(obj, operation)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"not a JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _child(node: Any, key: str) -> Any:
    try:
        return node[int(key)] if isinstance(node, list) else node[key]
    except (KeyError, IndexError, ValueError, TypeError):
        raise KustomizeError(f"no {key!r} in the document") from None


def apply_operation(doc: Object, operation: dict[str, Any]) -> None:
    """One JSON 6902 operation (test, replace, add or remove), in place."""
    *parents, last = _pointer(operation["path"])
    node: Any = doc
    for key in parents:
        node = _child(node, key)
    op = operation["op"]
    if op == "test":
        if _child(node, last) != operation["value"]:
            raise KustomizeError(f"test failed at {operation['path']}: {_child(node, last)!r}")
    elif op == "replace":
        _child(node, last)  # must exist
        node[int(last) if isinstance(node, list) else last] = copy.deepcopy(operation["value"])
    elif op == "add":
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(operation["value"]))
        else:
            node[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        _child(node, last)
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise KustomizeError(f"unsupported operation {op!r}")


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


def strict(schema: Any) -> Any:
    """A CRD's schema as the API server applies it with strict field validation (kubectl's default):
    a field the schema does not declare is an error, not silently pruned."""
    if not isinstance(schema, dict):
        return schema
    found = dict(schema)
    if "properties" in schema:
        found["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            found["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found[key] = strict(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            found[key] = [strict(s) for s in schema[key]]
    return found


def crd_schemas(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict schema of each served version of the vendored CRDs."""
    found = {}
    for path in sorted(directory.glob("*.yaml")):
        (crd,) = documents(path)
        for version in crd["spec"]["versions"]:
            if version["served"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                found[key] = strict(version["schema"]["openAPIV3Schema"])
    return found
