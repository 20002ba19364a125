"""e2e fixtures: the private Postfix + Dovecot + milter of mailsys.py; their logs on failure."""

from __future__ import annotations

import pytest

from e2e.mailsys import LOGS, mail_system, tail

__all__ = ["mail_system"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failing e2e test's report ends with the last lines of every program's log."""
    report = yield
    if report.failed and item.get_closest_marker("e2e") is not None:
        for name, path in LOGS.items():
            report.sections.append((f"e2e log: {name} (last lines)", tail(path)))
    return report
