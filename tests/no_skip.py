"""A pytest plugin that `make test` loads (`python -m pytest -p tests.no_skip`): a skipped test fails instead.

Some tests skip where a developer's machine lacks what they need (root for the node agent's namespaces, the
CoreDNS binary, an optional plugin). CI and `make test` have all of it, so a skip there would only hide a
missing install step or a feature that no longer runs: it fails with the skip's own reason. A plugin rather
than a root conftest.py: the tests import their own directory's ``conftest`` by name, which a root one would
shadow.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under make test, which must run everything: {reason}"
    return report
