"""The end-of-session check (tests/conftest.py), run on a session of its own."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Looks like a hub's proxy to the check; sleeps.
STANDIN = [sys.executable, "-c", "import time; time.sleep(120)", "configurable-http-proxy"]


def run_session(folder: Path, test: str) -> subprocess.CompletedProcess:
    # The check as it is, without its grace period: nothing here is shutting down.
    (folder / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text() + "\nGRACE_S = 0\n")
    (folder / "test_it.py").write_text(test)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-p", "no:asyncio", "."],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_proxy_the_session_left_running_fails_the_run_named_and_is_killed(tmp_path):
    result = run_session(
        tmp_path,
        f"import subprocess\ndef test_leaves_a_proxy():\n    subprocess.Popen({STANDIN!r}, start_new_session=True)\n",
    )
    assert result.returncode == 1, result.stdout
    assert "processes the test run left running (now killed)" in result.stdout
    assert "configurable-http-proxy" in result.stdout and "1 passed" in result.stdout


def test_a_proxy_that_ran_before_the_session_is_not_counted(tmp_path):
    earlier = subprocess.Popen(STANDIN, cwd=tmp_path)
    try:
        result = run_session(tmp_path, "def test_nothing():\n    pass\n")
    finally:
        earlier.kill()
        earlier.wait()
    assert result.returncode == 0, result.stdout
    assert "left running" not in result.stdout
