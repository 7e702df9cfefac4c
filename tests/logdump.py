"""A pytest plugin that attaches the daemon's stderr log to a failing test's report.

Not active by default (tests/conftest.py is not ours to change); use it with
``pytest -p tests.logdump`` or add ``pytest_plugins = ["tests.logdump"]`` to conftest.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from .helpers import daemons_of


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for i, d in enumerate(daemons_of(item)):
            report.sections.append((f"chatd log {i} ({d.db.name})", "".join(d.log[-200:])))
