"""The test host's own dockerd, for tests that restart it (a crash, an upgrade, a reboot).

Only where the tests may: as root, with a dockerd that .ci/start-dockerd started (CI), never a
dockerd another service manages on a developer's machine (`restartable()` says which).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAEMON_JSON = Path("/etc/docker/daemon.json")


def restartable() -> str | None:
    """None when tests may stop and start this host's dockerd; otherwise why not."""
    if os.geteuid() != 0 or not shutil.which("pidof"):
        return "needs root and pidof"
    if subprocess.run(["pidof", "dockerd"], capture_output=True).returncode:
        return "no local dockerd process to restart"
    if Path("/run/systemd/system").is_dir() and not os.environ.get("CI"):
        return "dockerd here belongs to systemd; these tests restart only a dockerd started by .ci/start-dockerd"
    return None


def info() -> dict:
    r = subprocess.run(["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}


def wait_for(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(message)


def stop(timeout: float = 90) -> None:
    """SIGTERM, as `systemctl stop docker` or a shutdown sends it; returns once it has exited."""
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"], check=True)
    wait_for(
        lambda: subprocess.run(["pidof", "dockerd"], capture_output=True).returncode != 0,
        timeout,
        "dockerd did not stop",
    )


def start() -> None:
    subprocess.run([str(ROOT / ".ci" / "start-dockerd")], check=True, capture_output=True)
    wait_for(lambda: bool(info()), 60, "dockerd did not come back")


@contextlib.contextmanager
def live_restore(enabled: bool) -> Iterator[None]:
    """dockerd with live-restore on or off (a reload, no restart); the old setting afterwards."""
    original = DAEMON_JSON.read_text() if DAEMON_JSON.exists() else None
    config = json.loads(original) if original else {}
    DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
    DAEMON_JSON.write_text(json.dumps({**config, "live-restore": enabled}))
    subprocess.run(["pkill", "-HUP", "-x", "dockerd"], check=True)  # live-restore is reloadable
    wait_for(lambda: info().get("LiveRestoreEnabled") is enabled, 30, f"live-restore did not turn {enabled}")
    try:
        yield
    finally:
        if subprocess.run(["pidof", "dockerd"], capture_output=True).returncode != 0:
            start()
        # A reload keeps settings the file no longer names: say the old value once, then restore the file.
        before = bool(config.get("live-restore", False))
        DAEMON_JSON.write_text(json.dumps({**config, "live-restore": before}))
        subprocess.run(["pkill", "-HUP", "-x", "dockerd"], check=False)
        wait_for(lambda: info().get("LiveRestoreEnabled") is before, 30, "live-restore not restored")
        if original is None:
            DAEMON_JSON.unlink()
        else:
            DAEMON_JSON.write_text(original)
