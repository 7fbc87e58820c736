"""A run in which any test was skipped fails: CI must run every test, and a skip there hides a test that
no longer runs (a package missing from the image, a service not started).

On a developer's machine, ALLOW_SKIPS=1 lets skips pass, e.g. without TensorFlow or OpenVINO installed:
`ALLOW_SKIPS=1 make test` (pytest still counts them in its summary; `-rs` shows their reasons). Expected
failures (xfail) are not skips and do not count.

One skip passes without it: the browser tests' when there is no Chromium (`skip_without_browser`), so that
`make test` passes on a newcomer's machine; a one-line note says why they did not run. CI sets
REQUIRE_BROWSER=1, which makes a missing Chromium a failure instead.

A pytest plugin, registered by tests/conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import pytest

ALLOW_SKIPS = "ALLOW_SKIPS"
REQUIRE_BROWSER = "REQUIRE_BROWSER"
# The reason every browser test is skipped with when there is no Chromium: the one skip that passes.
NO_BROWSER = "no Chromium for the browser tests"


def skips_allowed() -> bool:
    return os.environ.get(ALLOW_SKIPS, "") == "1"


def browser_required() -> bool:
    return os.environ.get(REQUIRE_BROWSER, "") == "1"


def skip_without_browser(detail: str) -> NoReturn:
    """No Chromium here: skip the browser test (a skip the run allows), or fail it under REQUIRE_BROWSER=1."""
    reason = f"{NO_BROWSER}: {detail}"
    if browser_required():
        pytest.fail(f"{reason} ({REQUIRE_BROWSER}=1)", pytrace=False)
    pytest.skip(reason)


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr  # for a skip: (file, line, "Skipped: <reason>")
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipGuard:
    """Notes each skipped test (or module, skipped while collected); at the end, fails the run if any."""

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}  # node id -> reason
        self.without_browser: dict[str, str] = {}  # the same, for the browser tests skipped without Chromium
        self.verdict = ""

    def _note(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = _reason(report)
            allowed = reason.startswith(NO_BROWSER) and not browser_required()
            (self.without_browser if allowed else self.skipped).setdefault(report.nodeid, reason)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.skipped or skips_allowed():
            return
        listed = "; ".join(f"{node} ({reason})" for node, reason in self.skipped.items())
        self.verdict = (
            f"FAILED: {len(self.skipped)} skipped, and {ALLOW_SKIPS}=1 is not set (CI runs every test; "
            f"{ALLOW_SKIPS}=1 allows skips on a developer's machine): {listed}"
        )
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if not session.config.pluginmanager.has_plugin("terminalreporter"):
            print(self.verdict, file=sys.stderr)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        # Called after pytest_sessionfinish, inside the terminal reporter's own.
        if self.without_browser:
            reasons = sorted(set(self.without_browser.values()))
            terminalreporter.write_line(
                f"{len(self.without_browser)} browser tests skipped, {'; '.join(reasons)}"
                f" ({REQUIRE_BROWSER}=1 makes this a failure)",
                yellow=True,
            )
        if self.verdict:
            terminalreporter.write_line(self.verdict, red=True, bold=True)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGuard(), "tests-skip-guard")
