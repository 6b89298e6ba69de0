"""A real gpuhub for tests and benchmarks: the production jupyterhub_config.py, run as a real
JupyterHub process with a real configurable-http-proxy, against the real Docker
Engine. Test-only settings (ports, names, an admin API token) come from the
environment and a small overlay config that loads the production one first.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from spawner.container import LABEL_HUB, LABEL_USER

from . import processes

ROOT = Path(__file__).resolve().parents[1]
TEST_HUB_ID = "gpuhub-test"
TEST_PREFIX = "gpuhubtest"
TEST_NETWORK = "gpuhub-test-users"
TEST_SUBNET = "10.231.0.0/24"
TEST_GATEWAY = "10.231.0.1"
TEST_BRIDGE = "gpuhubtest0"
SHARED_PASSWORD = "student-password"
ADMIN_PASSWORD = "admin-password-" + "x" * 32

OVERLAY = """
c = get_config()  # noqa
load_subconfig({config!r})
c.DockerSpawner.prefix = {prefix!r}
c.GPUDockerSpawner.hub_id = {hub_id!r}
c.JupyterHub.services = list(c.JupyterHub.services or []) + [
    {{"name": "test-admin", "api_token": {token!r}}}
]
# The admin role, as the production config defines it (with gpuhub's scopes), for the test service too.
_roles = list(c.JupyterHub.load_roles or [])
_admin = next((r for r in _roles if r["name"] == "admin"), None)
if _admin is None:
    _roles.append({{"name": "admin", "services": ["test-admin"]}})
else:
    _admin["services"] = [*_admin.get("services", []), "test-admin"]
c.JupyterHub.load_roles = _roles
{extra}
"""


def ensure_network(client) -> str:
    """The test hubs' user network, made by the product's own script (no inter-container
    traffic, no metadata address), with a fixed gateway the containers reach the hub at."""
    subprocess.run(
        [str(ROOT / "scripts" / "user-network.sh"), TEST_NETWORK, TEST_SUBNET, TEST_BRIDGE],
        check=True,
        capture_output=True,
        text=True,
    )
    return TEST_NETWORK


def user_container(client, user: str, include_stopped: bool = False):
    """The test hubs' container of `user`, found by gpuhub's labels as the hub does; None if none."""
    found = client.containers.list(
        all=include_stopped, filters={"label": [f"{LABEL_HUB}={TEST_HUB_ID}", f"{LABEL_USER}={user}"]}
    )
    return found[0] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    """One JupyterHub process; `start()`/`stop()`/`kill()` may be called repeatedly."""

    instances: list[Hub] = []  # for dumping logs when a test fails

    def __init__(self, workdir: Path, image: str, env: dict[str, str] | None = None, extra_config: str = ""):
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        self.env = {
            **os.environ,
            "GPUHUB_SHARED_PASSWORD": SHARED_PASSWORD,
            "GPUHUB_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "GPUHUB_ADMIN_USERS": "admin",
            "GPUHUB_NOTEBOOK_IMAGE": image,
            "GPUHUB_NETWORK": TEST_NETWORK,
            "GPUHUB_HUB_CONNECT_IP": TEST_GATEWAY,
            "GPUHUB_PORT": str(self.port),
            "GPUHUB_HUB_PORT": str(free_port()),
            "GPUHUB_CONSOLE_PORT": str(free_port()),
            "GPUHUB_PROXY_API_PORT": str(free_port()),
            "GPUHUB_DATA_DIR": str(self.data_dir),
            "GPUHUB_MEM_LIMIT": "2G",
            "GPUHUB_SHM_SIZE": "1G",
            "GPUHUB_PIDS_LIMIT": "1024",
            **(env or {}),
        }
        self.config = workdir / "test_config.py"
        self.config.write_text(
            OVERLAY.format(
                config=str(ROOT / "jupyterhub_config.py"),
                prefix=TEST_PREFIX,
                hub_id=TEST_HUB_ID,
                token=self.token,
                extra=extra_config,
            )
        )
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "hub.log"
        Hub.instances.append(self)

    # --- process ---------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> Hub:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.config)],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so what a killed hub leaves behind can be reaped
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.reap()  # a proxy or service it started before failing
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/hub/health", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()  # a hub that never answered is still running: no caller would stop it
        raise RuntimeError(f"hub did not answer in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reap()

    def reap(self) -> None:
        """Kill what an exited hub left behind: its process group, and its proxy and managed
        services (the idle culler), which JupyterHub starts in sessions of their own. They are
        found by the working directory they share with the hub (this hub's alone)."""
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        workdir, here = self.workdir.resolve(), Path.cwd().resolve()
        if workdir == here or workdir in here.parents:
            return  # the caller works in it too: its processes cannot be told from the hub's
        processes.kill(processes.in_directory(workdir))

    def kill(self) -> None:
        """SIGKILL: the hub gets no chance to clean up, like a crash. Its proxy and idle culler
        keep running, as on a host; `reap()` (or `stop()`) ends them."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- REST API as the test admin service -------------------------------------------------
    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, **kwargs)

    def user_model(self, name: str) -> dict:
        r = self.api("GET", f"/users/{name}")
        r.raise_for_status()
        return r.json()

    def start_server(self, name: str, server: str = "", options: dict | None = None) -> requests.Response:
        self.api("POST", "/users", json={"usernames": [name]})
        path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
        return self.api("POST", path, json=options or {})

    def progress(self, name: str, server: str = "", timeout: float = 180) -> list[dict]:
        """Follow the spawn's progress event stream until it ends; return the events."""
        path = f"/users/{name}/servers/{server}/progress" if server else f"/users/{name}/server/progress"
        events = []
        with self.api("GET", path, stream=True, timeout=timeout) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    events.append(event)
                    if event.get("ready") or event.get("failed"):
                        break
        return events

    def wait_ready(self, name: str, server: str = "", timeout: float = 180) -> dict:
        events = self.progress(name, server, timeout)
        if not events or not events[-1].get("ready"):
            raise AssertionError(f"server of {name} did not become ready: {events[-3:]}\n{self.log_tail()}")
        return self.user_model(name)["servers"][server]

    def stop_server(self, name: str, server: str = "", timeout: float = 60) -> None:
        path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
        r = self.api("DELETE", path)
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server not in self.user_model(name)["servers"]:
                return
            time.sleep(0.2)
        raise AssertionError(f"server of {name} did not stop in {timeout} s")
