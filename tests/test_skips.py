"""tests/skips.py: a run with a skipped test fails unless ALLOW_SKIPS=1 (each run here is a pytest of its
own, in a subprocess, on a few tiny tests with the plugin registered as tests/conftest.py does)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

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


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A directory whose conftest registers the plugin, as the tests' does; the repository importable."""
    monkeypatch.delenv("ALLOW_SKIPS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest('pytest_plugins = ["tests.skips"]')
    return pytester


def outcome(pytester: pytest.Pytester) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


@pytest.mark.parametrize("allow", [None, "", "0", "true"])
def test_a_skip_fails_the_run(run: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, allow: str | None) -> None:
    if allow is not None:
        monkeypatch.setenv("ALLOW_SKIPS", allow)
    run.makepyfile(test_some=SOME_SKIPPED)
    result = outcome(run)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    verdict = [line for line in result.outlines if "ALLOW_SKIPS=1 is not set" in line]
    assert verdict == [
        "FAILED: 2 skipped, and ALLOW_SKIPS=1 is not set (CI runs every test; ALLOW_SKIPS=1 allows skips on "
        "a developer's machine): test_some.py::test_skipped (not on this machine); "
        "test_some.py::test_skips_itself (no server)"
    ]


def test_allow_skips_lets_them_pass(run: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOW_SKIPS", "1")
    run.makepyfile(test_some=SOME_SKIPPED)
    result = outcome(run)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert not [line for line in result.outlines if "ALLOW_SKIPS" in line]


def test_a_module_skipped_while_collected_fails_the_run(run: pytest.Pytester) -> None:
    run.makepyfile(
        test_needs_it='import pytest\n\npytest.importorskip("no_such_package_here")\n\ndef test_x():\n    pass\n',
        test_other="def test_y():\n    pass\n",
    )
    result = outcome(run)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["FAILED: 1 skipped, * test_needs_it.py (could not import 'no_such_package_here'*"])


def test_without_skips_nothing_changes(run: pytest.Pytester) -> None:
    run.makepyfile(test_fine="def test_x():\n    pass\n", test_broken="def test_y():\n    assert False\n")
    result = outcome(run)
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # a failure stays a failure
    run.path.joinpath("test_broken.py").unlink()
    fine = outcome(run)
    assert fine.ret == pytest.ExitCode.OK and not [line for line in fine.outlines if "ALLOW_SKIPS" in line]
