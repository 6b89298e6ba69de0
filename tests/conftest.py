"""Every test session: nothing of the test stack it started may outlive it.

JupyterHub starts its proxy and managed services (the idle culler) in sessions of their own, so a
hub killed with SIGKILL leaves them running; a provider or tunnel a fixture forgot does the same.
At the end of the session, such processes that this session started and that still run fail the
run (non-zero exit), named in the summary, and are killed. Processes that ran before the session
began, or that another session started, are never counted.
"""

from __future__ import annotations

import os
import secrets
import time

import pytest

from harness import processes

# What the test stack runs. dockerd, which the engine-fault tests restart, is meant to outlive the session.
STACK = ("jupyterhub", "configurable-http-proxy", "provider.mjs", "websocat", "git-daemon", "git daemon")
MARKER = "GPUHUB_TEST_SESSION"  # in the environment of every process the session starts (most inherit it)
GRACE_S = 10  # for processes that are already shutting down

_before: set[tuple[int, int]] = set()
_temp: list[pytest.TempPathFactory] = []  # this session's, once a test ran
_leftovers: list[processes.Process] = []


def pytest_sessionstart(session):
    _before.update(p.key for p in processes.running())
    os.environ[MARKER] = f"{os.getpid()}-{secrets.token_hex(4)}"


@pytest.fixture(scope="session", autouse=True)
def _session_temp(tmp_path_factory):
    _temp.append(tmp_path_factory)


def pytest_sessionfinish(session):
    deadline = time.monotonic() + GRACE_S
    left = _left_by_this_session()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _left_by_this_session()
    if left:
        _leftovers.extend(left)
        processes.kill(left)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _leftovers:
        terminalreporter.section("processes the test run left running (now killed)", red=True)
        for p in _leftovers:
            terminalreporter.write_line(f"  pid {p.pid} in {p.cwd or '?'}: {p.cmdline[:200]}")


def _left_by_this_session() -> list[processes.Process]:
    """Live processes of the test stack that this session started: its descendants, processes
    carrying its marker, and processes working in its temporary directory (a hub's proxy and
    services keep the hub's working directory but not its environment)."""
    found = processes.running()
    by_pid = {p.pid: p for p in found}
    marker = os.environ.get(MARKER)
    basetemp = _temp[0].getbasetemp() if _temp else None  # where tmp_path folders (hub workdirs) are
    return [
        p
        for p in found
        if p.key not in _before
        and p.pid != os.getpid()
        and any(name in p.cmdline for name in STACK)
        and (
            processes.descends_from(p, os.getpid(), by_pid)
            or (basetemp is not None and p.works_in(basetemp))
            or (marker is not None and p.environ().get(MARKER) == marker)
        )
    ]
