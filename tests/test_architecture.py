"""The rules the layout of app/ promises (README, "How it works"), each checked on the source itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
MAX_LINES = 350
# Redis commands on streams: only app/jobs/ speaks the protocol.
STREAM_COMMANDS = {
    "xadd",
    "xack",
    "xautoclaim",
    "xclaim",
    "xdel",
    "xgroup_create",
    "xgroup_createconsumer",
    "xgroup_delconsumer",
    "xgroup_destroy",
    "xgroup_setid",
    "xinfo_consumers",
    "xinfo_groups",
    "xinfo_stream",
    "xlen",
    "xpending",
    "xpending_range",
    "xrange",
    "xread",
    "xreadgroup",
    "xrevrange",
    "xtrim",
}
# Names every module may have for itself: its logger, the route handlers it contributes, its entry point.
PER_MODULE_NAMES = {"log", "routes", "main"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(APP.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def imported(name: str, tree: ast.Module) -> set[str]:
    """The app modules `name` imports, anywhere in it (inside functions too: a late import is still an arrow)."""
    found: set[str] = set()
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in MODULES and m != name and MODULES[m].name != "__init__.py"}


GRAPH = {name: imported(name, tree) for name, tree in TREES.items()}


def test_no_import_cycles() -> None:
    try:
        TopologicalSorter(GRAPH).prepare()
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("app.jobs", ("app.web", "app.worker")),
        ("app.worker", ("app.web",)),
        ("app.web", ("app.worker",)),
    ],
)
def test_arrows_run_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    """web -> jobs <- worker; the modules at the top of app/ are used by all and use none of them."""
    wrong = {
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.startswith(layer)
        for target in targets
        if target.startswith(forbidden)
    }
    assert not wrong


def test_top_level_modules_use_no_layer() -> None:
    top = [name for name in GRAPH if name.count(".") == 1]
    wrong = {f"{n} imports {t}" for n in top for t in GRAPH[n] if t.startswith(("app.web", "app.worker"))}
    assert not wrong


def test_only_jobs_issue_stream_commands() -> None:
    calls = {
        f"{name}:{node.lineno} {node.func.attr}"
        for name, tree in TREES.items()
        if not name.startswith("app.jobs")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STREAM_COMMANDS
    }
    assert not calls


def environment_reads(tree: ast.Module) -> list[int]:
    """Lines that read the environment. Setting a variable for a child process or a library's default
    (`os.environ[k] = v`, `os.environ.setdefault`) is not reading configuration."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    reads = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "getenv":
            reads.append(node.lineno)
        if not (isinstance(node, ast.Attribute) and node.attr == "environ"):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store):
            continue
        if isinstance(parent, ast.Attribute) and parent.attr == "setdefault":
            continue
        reads.append(node.lineno)
    return sorted(reads)


def test_only_settings_read_the_environment() -> None:
    # The command-line client is a program of its own, run on users' machines.
    allowed = {"app.settings", "app.client"}
    reads = {
        f"{name}:{line}" for name, tree in TREES.items() if name not in allowed for line in environment_reads(tree)
    }
    assert not reads


def test_the_check_finds_environment_reads() -> None:
    sample = "import os\na = os.environ.get('X')\nb = os.getenv('Y')\nc = dict(os.environ)\nos.environ['Z'] = '1'\n"
    assert environment_reads(ast.parse(sample)) == [2, 3, 4]


@pytest.mark.parametrize("entry", ["import app.worker.__main__", "import runpy; runpy.run_path('worker.py')"])
def test_the_worker_does_not_import_the_web_stack(entry: str) -> None:
    code = f"{entry}; import sys; print(sorted(m for m in sys.modules if m.startswith(('litestar', 'app.web'))))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_no_file_is_too_long() -> None:
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long


def defined_names(tree: ast.Module) -> set[str]:
    """Top-level classes, functions and constants (UPPER_CASE) of a module."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name) and t.id.lstrip("_").isupper()}
    return names - PER_MODULE_NAMES


def test_no_two_modules_define_the_same_name() -> None:
    counts = Counter(name for tree in TREES.values() for name in defined_names(tree))
    twice = {
        name: sorted(m for m, tree in TREES.items() if name in defined_names(tree))
        for name, count in counts.items()
        if count > 1
    }
    assert not twice
