"""tests/skips.py: a run with a skipped test fails unless ALLOW_SKIPS=1, except the browser tests' skip
without Chromium, which fails only under REQUIRE_BROWSER=1 (each run here is a pytest of its own, in a
subprocess, on a few tiny tests with the plugin registered as tests/conftest.py does)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SOME_SKIPPED = """
import pytest

def test_runs():
    pass

@pytest.mark.skip(reason="not on this machine")
def test_skipped():
    pass

def test_skips_itself():
    pytest.skip("no server")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_to_fail():
    assert False
"""


@dataclass
class Project:
    """A directory of tiny tests whose conftest registers the plugin, as the tests' does.

    Not pytest's `pytester`: its teardown empties sys.modules and fills it again, and a thread of this
    session importing in between re-creates `_io`, whose errors then escape every `except
    io.UnsupportedOperation` (Pillow's JPEG save among them: 68 failures in CI on 2026-12-02). pyproject.toml
    turns the plugin off (`-p no:pytester`)."""

    path: Path

    def makepyfile(self, **files: str) -> None:
        for name, text in files.items():
            (self.path / f"{name}.py").write_text(text)

    def outcome(self) -> pytest.RunResult:
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={self.path / 'tmp'}"]
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"} | {"PYTHONPATH": str(ROOT)}
        started = time.monotonic()
        done = subprocess.run(
            command, cwd=self.path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240
        )
        lines = done.stdout.splitlines(), done.stderr.splitlines()
        return pytest.RunResult(done.returncode, *lines, time.monotonic() - started)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.delenv("ALLOW_SKIPS", raising=False)
    monkeypatch.delenv("REQUIRE_BROWSER", raising=False)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.skips"]\n')
    return Project(tmp_path)


@pytest.mark.parametrize("allow", [None, "", "0", "true"])
def test_a_skip_fails_the_run(run: Project, monkeypatch: pytest.MonkeyPatch, allow: str | None) -> None:
    if allow is not None:
        monkeypatch.setenv("ALLOW_SKIPS", allow)
    run.makepyfile(test_some=SOME_SKIPPED)
    result = run.outcome()
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    verdict = [line for line in result.outlines if "ALLOW_SKIPS=1 is not set" in line]
    assert verdict == [
        "FAILED: 2 skipped, and ALLOW_SKIPS=1 is not set (CI runs every test; ALLOW_SKIPS=1 allows skips on "
        "a developer's machine): test_some.py::test_skipped (not on this machine); "
        "test_some.py::test_skips_itself (no server)"
    ]


def test_allow_skips_lets_them_pass(run: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOW_SKIPS", "1")
    run.makepyfile(test_some=SOME_SKIPPED)
    result = run.outcome()
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert not [line for line in result.outlines if "ALLOW_SKIPS" in line]


def test_a_module_skipped_while_collected_fails_the_run(run: Project) -> None:
    run.makepyfile(
        test_needs_it='import pytest\n\npytest.importorskip("no_such_package_here")\n\ndef test_x():\n    pass\n',
        test_other="def test_y():\n    pass\n",
    )
    result = run.outcome()
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["FAILED: 1 skipped, * test_needs_it.py (could not import 'no_such_package_here'*"])


def test_without_skips_nothing_changes(run: Project) -> None:
    run.makepyfile(test_fine="def test_x():\n    pass\n", test_broken="def test_y():\n    assert False\n")
    result = run.outcome()
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # a failure stays a failure
    run.path.joinpath("test_broken.py").unlink()
    fine = run.outcome()
    assert fine.ret == pytest.ExitCode.OK and not [line for line in fine.outlines if "ALLOW_SKIPS" in line]


BROWSER_MISSING = """
import pytest
from tests.skips import skip_without_browser

@pytest.fixture
def chromium():
    skip_without_browser("none at /nowhere/chromium")

def test_in_chromium(chromium):
    pass

def test_in_chromium_too(chromium):
    pass

def test_runs():
    pass
"""
NOTE = (
    "2 browser tests skipped, no Chromium for the browser tests: none at /nowhere/chromium "
    "(REQUIRE_BROWSER=1 makes this a failure)"
)


def test_without_chromium_the_browser_tests_skip_with_a_one_line_reason(run: Project) -> None:
    run.makepyfile(test_browser=BROWSER_MISSING)
    result = run.outcome()
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    assert [line for line in result.outlines if "browser tests skipped" in line] == [NOTE]
    assert "passed" in result.outlines[-1]  # pytest's summary stays the last line


def test_require_browser_makes_a_missing_chromium_fail(run: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUIRE_BROWSER", "1")
    run.makepyfile(test_browser=BROWSER_MISSING)
    result = run.outcome()
    result.assert_outcomes(passed=1, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*no Chromium for the browser tests: none at /nowhere/chromium (REQUIRE_BROWSER=1)*"])


def test_other_skips_still_fail_beside_the_browser_one(run: Project) -> None:
    run.makepyfile(test_browser=BROWSER_MISSING, test_some=SOME_SKIPPED)
    result = run.outcome()
    result.assert_outcomes(passed=2, skipped=4, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["FAILED: 2 skipped, and ALLOW_SKIPS=1 is not set *"])
    assert not [line for line in result.outlines if line.startswith("FAILED") and "test_browser.py" in line]


@pytest.mark.parametrize("require", ["", "1"])
def test_the_real_browser_tests_without_chromium(tmp_path: Path, require: str) -> None:
    """tests/web/browser on a machine without Chromium: skipped before any server starts, with the reason,
    and the run passes; a failure under REQUIRE_BROWSER=1. Its own SQLite and embedded Redis."""
    env = os.environ | {
        "CHROMIUM_PATH": str(tmp_path / "no-chromium"),
        "REQUIRE_BROWSER": require,
        "ALLOW_SKIPS": "",
        "DATABASE_URL": "",
        "REDIS_URL": "",
    }
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/web/browser"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    lines = result.stdout.splitlines()
    reason = f"no Chromium for the browser tests: none at {tmp_path / 'no-chromium'}"
    if require:
        assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout[-3000:]
        assert " passed" not in lines[-1] and " error" in lines[-1], lines[-1]
        assert any(f"{reason} (`apt-get install chromium` on Debian" in line for line in lines)
    else:
        assert result.returncode == pytest.ExitCode.OK, result.stdout[-3000:]
        assert " skipped" in lines[-1] and "passed" not in lines[-1] and "error" not in lines[-1], lines[-1]
        note = [line for line in lines if "browser tests skipped" in line]
        assert len(note) == 1 and note[0].endswith(
            f"{reason} (`apt-get install chromium` on Debian, or set"
            " CHROMIUM_PATH) (REQUIRE_BROWSER=1 makes this a failure)"
        ), note


def test_this_session_has_no_pytester(request: pytest.FixtureRequest) -> None:
    """See `Project`: with pytester in the session, every test after its first teardown could lose Pillow's
    JPEG encoder to a re-created `_io`."""
    assert not request.config.pluginmanager.has_plugin("pytester")
