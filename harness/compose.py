"""gpuhub as users run it: `make up` with docker-compose.yml, for tests and benchmarks.

The deployment gets its own settings file (made by scripts/make-env.sh, as for users), config
folder, data volume, public port and compose project, so a developer's .env, ./config and
gpuhub-data are never read or touched. Some names are fixed by compose and the hub: the
gpuhub-hub container, the gpuhub-users network and the hub's address on it, the hub id
`gpuhub` on user containers. A real deployment on the same engine would share them, so
`up()` refuses to run next to one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import docker
import requests

from spawner.container import LABEL_HUB, LABEL_USER

ROOT = Path(__file__).resolve().parents[1]
HUB_CONTAINER = "gpuhub-hub"
WATCHDOG_CONTAINER = "gpuhub-hub-watchdog"
HUB_ID = "gpuhub"
NETWORK = "gpuhub-users"
PROJECT = "gpuhubtest"
DATA_VOLUME = "gpuhub-test-data"
POSTGRES_VOLUME = "gpuhub-test-postgres"
USER_PREFIX = "gpuhubt-dc"
MODEL = "NVIDIA A100-SXM4-80GB"


class EngineBusy(RuntimeError):
    """Another gpuhub deployment runs on this Docker engine."""


def standin_gpus(count: int) -> list[str]:
    return [f"GPU-dc0de000-0000-0000-0000-{i:012d}" for i in range(count)]


def gpu_config(gpus: list[str]) -> dict:
    """Stand-in GPUs (the inventory NVML would report) and profiles anyone may use."""
    return {
        "profiles": [
            {"slug": "cpu", "display_name": "CPU only", "default": True},
            {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}},
            {"slug": "gpu-x2", "display_name": "2 GPUs", "gpu": {"count": 2}},
        ],
        "gpus": [{"uuid": u, "model": MODEL} for u in gpus],
        "quota": {"default": {"profiles": "*"}},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Held:
    """A running user container as the engine reports it."""

    user: str  # its LABEL_USER label: container names escape user names
    started_at: str
    devices: tuple[str, ...]


def engine_view(client) -> dict[str, Held]:
    """Running containers of gpuhub deployments by id, with the devices Docker gives them."""
    view = {}
    for summary in client.api.containers(filters={"label": f"{LABEL_HUB}={HUB_ID}", "status": "running"}):
        try:
            info = client.api.inspect_container(summary["Id"])
        except docker.errors.NotFound:
            continue
        devices = tuple(
            d
            for request in info["HostConfig"].get("DeviceRequests") or []
            if request.get("Driver") == "nvidia"
            for d in request.get("DeviceIDs") or []
        )
        user = (info["Config"].get("Labels") or {}).get(LABEL_USER, "")
        view[info["Id"]] = Held(user, info["State"]["StartedAt"], devices)
    return view


def holders(view: dict[str, Held]) -> dict[str, str]:
    """device -> the container holding it; a device Docker gave to two running containers fails here."""
    out: dict[str, str] = {}
    for cid, held in view.items():
        for device in held.devices:
            assert device not in out, f"{device} is given to both {out[device][:12]} and {cid[:12]}"
            out[device] = cid
    return out


def who_holds(client) -> dict[str, str]:
    """device -> the user whose running container Docker gives it to."""
    view = engine_view(client)
    return {device: view[cid].user for device, cid in holders(view).items()}


class Deployment:
    """One compose deployment, started with `make up` and removed with `make down` plus what it made."""

    def __init__(self, workdir: Path, image: str, gpus: list[str], settings: dict[str, str] | None = None):
        self.workdir = workdir
        self.image = image
        self.gpus = gpus
        self.env_file = workdir / "gpuhub.env"
        self.config_dir = workdir / "config"
        self.log_path = workdir / "make.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = settings or {}
        self.token = ""
        self.client = docker.from_env(version="auto")
        self._made_network = False

    # --- lifecycle --------------------------------------------------------------------------
    def up(self, timeout: float = 1200, make_args: tuple[str, ...] = ()) -> Deployment:
        self._refuse_next_to_another_deployment()
        self._remove_own_leftovers()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "gpus.json").write_text(json.dumps(gpu_config(self.gpus)))
        self._write_settings()
        self._made_network = not self._exists(self.client.networks, NETWORK)
        self.make("up", timeout=timeout, args=make_args)
        self.token = self._admin_token()
        return self

    def down(self) -> None:
        """Leave the engine as before: the hub, this deployment's users' containers and volumes, its data."""
        if self.env_file.exists():
            self.make("down", timeout=180, check=False)
        self._remove_user_containers()
        for volume in self.client.volumes.list():
            if volume.name.startswith(f"jupyterhub-user-{USER_PREFIX}"):
                self._remove_volume(volume.name)
        self._remove_volume(DATA_VOLUME)
        self._remove_volume(POSTGRES_VOLUME)
        if self._made_network:
            try:
                network = self.client.networks.get(NETWORK)
                if not network.attrs.get("Containers"):
                    network.remove()
            except docker.errors.DockerException:
                pass

    def make(
        self, target: str, timeout: float, check: bool = True, args: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess:
        """The Makefile target users run, on this deployment's settings file (`args`: more VAR=value)."""
        # Variables given to an outer `make test` would reach this make through MAKEFLAGS.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        env["COMPOSE_PROJECT_NAME"] = PROJECT
        with open(self.log_path, "a") as log:
            log.write(f"\n$ make {target}\n")
            log.flush()
            proc = subprocess.run(
                ["make", target, f"ENV_FILE={self.env_file}", "BUILD_NOTEBOOK=no", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        if check and proc.returncode != 0:
            raise RuntimeError(f"make {target} failed ({proc.returncode}):\n{self.log_tail()}")
        return proc

    def _write_settings(self) -> None:
        subprocess.run([str(ROOT / "scripts/make-env.sh"), str(ROOT / ".env.example"), str(self.env_file)], check=True)
        wanted = {
            "GPUHUB_PUBLIC_PORT": str(self.port),
            "GPUHUB_CONFIG_DIR": str(self.config_dir),
            "GPUHUB_DATA_VOLUME": DATA_VOLUME,
            "GPUHUB_POSTGRES_VOLUME": POSTGRES_VOLUME,
            "GPUHUB_NOTEBOOK_IMAGE": self.image,
            "GPUHUB_GPU_CONFIG": "/srv/gpuhub/config/gpus.json",
            "GPUHUB_MEM_LIMIT": "1G",
            "GPUHUB_SHM_SIZE": "256M",
            "GPUHUB_IDLE_TIMEOUT": "0",
            **self.settings,
        }
        lines = []
        for line in self.env_file.read_text().splitlines():
            key = line.split("=", 1)[0]
            lines.append(f"{key}={wanted.pop(key)}" if key in wanted else line)
        lines += [f"{k}={v}" for k, v in wanted.items()]
        self.env_file.write_text("\n".join(lines) + "\n")

    def setting(self, name: str) -> str:
        found = [
            line.split("=", 1)[1] for line in self.env_file.read_text().splitlines() if line.startswith(name + "=")
        ]
        return found[-1]

    def _admin_token(self) -> str:
        # Signing in with the admin password through JupyterHub's token API: nothing test-only in the hub.
        r = requests.post(
            f"{self.url}/hub/api/users/admin/tokens",
            json={
                "auth": {"username": "admin", "password": self.setting("GPUHUB_ADMIN_PASSWORD")},
                "expires_in": 3600,
                "note": "compose deployment tests",
            },
            timeout=30,
        )
        r.raise_for_status()
        return r.json()["token"]

    def _refuse_next_to_another_deployment(self) -> None:
        for name in (HUB_CONTAINER, WATCHDOG_CONTAINER):
            try:
                found = self.client.containers.get(name)
            except docker.errors.NotFound:
                continue
            if found.labels.get("com.docker.compose.project") != PROJECT:
                raise EngineBusy(f"a gpuhub deployment ({name}) exists on this Docker engine")
        others = [
            c.name
            for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_HUB}={HUB_ID}"})
            if not c.labels.get(LABEL_USER, "").startswith(USER_PREFIX)
        ]
        if others:
            raise EngineBusy(f"user containers of a gpuhub deployment exist on this Docker engine: {others[:5]}")

    def _remove_own_leftovers(self) -> None:
        """What an interrupted earlier run left (same project, same user prefix)."""
        for c in self.client.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"}):
            c.remove(force=True)
        for name in (WATCHDOG_CONTAINER, HUB_CONTAINER):
            if self._exists(self.client.containers, name):
                self.client.containers.get(name).remove(force=True)
        self._remove_user_containers()
        self._remove_volume(DATA_VOLUME)
        self._remove_volume(POSTGRES_VOLUME)

    def _remove_user_containers(self) -> None:
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_HUB}={HUB_ID}"}):
            if c.labels.get(LABEL_USER, "").startswith(USER_PREFIX):
                try:
                    c.remove(force=True)
                except docker.errors.NotFound:
                    pass

    def _remove_volume(self, name: str) -> None:
        try:
            self.client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass

    @staticmethod
    def _exists(collection, name: str) -> bool:
        try:
            collection.get(name)
            return True
        except docker.errors.NotFound:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def hub_log(self, since: float | None = None, tail: int = 60) -> str:
        """The hub container's log: since `since` (epoch seconds), else its last `tail` lines."""
        try:
            c = self.client.containers.get(HUB_CONTAINER)
        except docker.errors.NotFound:
            return "(no hub container)"
        kwargs = {"since": int(since)} if since else {"tail": tail}
        return c.logs(**kwargs).decode(errors="replace")

    # --- the hub container ------------------------------------------------------------------
    def hub_state(self) -> dict:
        return self.client.api.inspect_container(HUB_CONTAINER)["State"]

    def hub_starts(self, since: float) -> int:
        """How often the hub container was started since `since` (epoch seconds), by anyone."""
        events = self.client.api.events(
            since=since,
            until=time.time() + 0.1,
            filters={"type": "container", "container": HUB_CONTAINER, "event": "start"},
            decode=True,
        )
        return sum(1 for _ in events)

    def kill_hub(self) -> float:
        """`docker kill -s KILL gpuhub-hub`, as a crash or the OOM killer would; returns when it was sent."""
        sent = time.time()
        subprocess.run(["docker", "kill", "-s", "KILL", HUB_CONTAINER], check=True, capture_output=True)
        return sent

    def wait_restarted(self, after: float, timeout: float = 30) -> dict:
        """Wait until the hub container has been started again after `after` (epoch seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.hub_state()
            if state["Running"] and epoch(state["StartedAt"]) > after:
                return state
            time.sleep(0.05)
        raise AssertionError(f"{HUB_CONTAINER} was not started again within {timeout} s: {self.hub_state()}")

    # --- REST API as the admin ----------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, **kwargs)

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/hub/health", timeout=2).ok
        except requests.RequestException:
            return False

    def servers(self) -> dict[tuple[str, str], dict]:
        r = self.api("GET", "/users", timeout=5)
        r.raise_for_status()
        return {(u["name"], name): s for u in r.json() for name, s in (u.get("servers") or {}).items()}

    def devices_held_metric(self) -> float | None:
        """Sum of gpuhub_devices_held over its labels; None before the ledger exists."""
        r = requests.get(f"{self.url}/hub/metrics", headers={"Authorization": f"token {self.token}"}, timeout=5)
        r.raise_for_status()
        values = [
            float(line.rsplit(" ", 1)[1]) for line in r.text.splitlines() if line.startswith("gpuhub_devices_held{")
        ]
        return sum(values) if values else None

    def start_server(self, user: str, profile: str, server: str = "") -> None:
        self.api("POST", "/users", json={"usernames": [user]})
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        r = self.api("POST", path, json={"profile": profile})
        assert r.status_code in (201, 202), f"spawn of {user} refused: {r.status_code} {r.text}"

    def progress(self, user: str, until, timeout: float = 180) -> list[dict]:
        """The spawn's progress events, up to the first one for which `until(event)` holds."""
        events = []
        with self.api("GET", f"/users/{user}/server/progress", stream=True, timeout=timeout) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if until(events[-1]) or events[-1].get("ready") or events[-1].get("failed"):
                        break
        return events

    def wait_ready(self, user: str, timeout: float = 180) -> None:
        events = self.progress(user, lambda e: False, timeout)
        if not events or not events[-1].get("ready"):
            raise AssertionError(f"server of {user} did not become ready: {events[-3:]}\n{self.hub_log(tail=30)}")

    def stop_server(self, user: str, timeout: float = 60) -> None:
        r = self.api("DELETE", f"/users/{user}/server")
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "" not in self.api("GET", f"/users/{user}").json().get("servers", {}):
                return
            time.sleep(0.2)
        raise AssertionError(f"server of {user} did not stop in {timeout} s")

    def start_all(self, plan: dict[str, str]) -> None:
        """Start each user's default server with its profile, then wait until all are ready."""
        for user, profile in plan.items():
            self.start_server(user, profile)
        for user in plan:
            self.wait_ready(user)

    def user_token(self, user: str) -> dict[str, str]:
        """Headers with a fresh token of `user` (as the admin may make)."""
        r = self.api("POST", f"/users/{user}/tokens", json={"expires_in": 900, "note": "compose test"})
        r.raise_for_status()
        return {"Authorization": f"token {r.json()['token']}"}

    def put_file(self, user: str, auth: dict[str, str], name: str, size: int = 256 * 1024) -> str:
        """A file of random bytes in the user's home, through their server's contents API; its sha256."""
        data = os.urandom(size)
        r = requests.put(
            f"{self.url}/user/{user}/api/contents/{name}",
            json={"type": "file", "format": "base64", "content": base64.b64encode(data).decode()},
            headers=auth,
            timeout=60,
        )
        assert r.status_code in (200, 201), r.text[:300]
        return hashlib.sha256(data).hexdigest()

    def file_sum(self, user: str, auth: dict[str, str], name: str) -> str:
        """sha256 of a file in the user's home, read through their server's contents API."""
        r = requests.get(
            f"{self.url}/user/{user}/api/contents/{name}", params={"format": "base64"}, headers=auth, timeout=60
        )
        assert r.status_code == 200, r.text[:300]
        return hashlib.sha256(base64.b64decode(r.json()["content"])).hexdigest()

    def recovered(self, servers: set[tuple[str, str]], devices_held: int) -> bool:
        """The hub answers, lists every one of `servers` as ready and its ledger holds `devices_held`."""
        if not self.healthy():
            return False
        try:
            listed = self.servers()
            if not all(listed.get(key, {}).get("ready") for key in servers):
                return False
            return self.devices_held_metric() == devices_held
        except requests.RequestException:
            return False


def epoch(docker_time: str) -> float:
    """Docker's RFC 3339 timestamps (nanoseconds, Z) as epoch seconds."""
    stamp, _, fraction = docker_time.rstrip("Z").partition(".")
    seconds = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return seconds + float(f"0.{fraction or 0}")


def unique_users(count: int, tag: str = "") -> list[str]:
    run = secrets.token_hex(2)
    return [f"{USER_PREFIX}{tag}{run}-{i}" for i in range(count)]
