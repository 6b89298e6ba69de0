"""gpuhub as a lab deploys it on a Swarm (`make swarm-up`: scripts/swarm-up.sh + docker-stack.yml),
on the simulated cluster of harness/swarm.py, for tests and benchmarks.

The hub image is built on the host engine (`make hub-image`) and loaded into the manager; the
notebook image into every node, as a lab without a registry would (`docker save | docker load`).
The stack's hub gets the manager node's Docker socket, a config folder and a shared home root on
the host filesystem, which every simulated node sees at the same path (the NFS mount of a real lab).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import requests

from harness.swarm import SwarmCluster, SwarmNode, wait_for
from spawner import container, swarm

ROOT = Path(__file__).resolve().parents[1]
HUB_IMAGE = "gpuhub/hub:latest"
STACK = "gpuhubswarm"
HUB_SERVICE = f"{STACK}_hub"
DATA_VOLUME = "gpuhub-swarm-test-data"
MODEL = "NVIDIA A100-SXM4-80GB"


def gpu_config() -> dict:
    """Profiles anyone may use; no `gpus`: the inventory is what the nodes advertise."""
    return {
        "profiles": [
            {"slug": "cpu", "display_name": "CPU only", "default": True},
            {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}},
            {"slug": "gpu-x2", "display_name": "2 GPUs", "gpu": {"count": 2}},
        ],
        "quota": {"default": {"profiles": "*"}},
    }


class SwarmDeployment:
    """One gpuhub stack on `cluster`, deployed by the script `make swarm-up` runs."""

    def __init__(self, cluster: SwarmCluster, workdir: Path, image: str, settings: dict[str, str] | None = None):
        self.cluster = cluster
        self.workdir = workdir
        self.image = image
        self.env_file = workdir / "gpuhub.env"
        self.config_dir = workdir / "config"
        self.home_root = cluster.shared_root / "homes"
        self.port = 18000
        self.url = f"http://{cluster.manager.ip}:{self.port}"
        self.settings = settings or {}
        self.token = ""

    # --- lifecycle ----------------------------------------------------------------------------
    def build_and_load_images(self) -> dict[str, float]:
        took = {}
        started = time.monotonic()
        subprocess.run(["make", "hub-image"], cwd=ROOT, check=True, capture_output=True, env=_clean_env())
        took["hub image build"] = time.monotonic() - started
        took["hub image -> manager"] = self.cluster.load_image(HUB_IMAGE, [self.cluster.manager])
        took["notebook image -> 3 nodes"] = self.cluster.load_image(self.image)
        return took

    def up(self, timeout: float = 240) -> SwarmDeployment:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "gpus.json").write_text(json.dumps(gpu_config()))
        self.home_root.mkdir(parents=True, exist_ok=True)
        self._write_settings()
        for node in self.cluster.nodes:
            self.cluster.manager.docker(
                "node", "update", "--label-add", f"{swarm.LABEL_GPU_MODEL}={MODEL}", node.node_id
            )
        proc = self.swarm_up()
        if proc.returncode != 0:
            raise RuntimeError(f"swarm-up failed ({proc.returncode}): {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        self.wait_healthy(timeout)
        self.token = self._admin_token()
        return self

    def swarm_up(self, env_file: Path | None = None) -> subprocess.CompletedProcess:
        """scripts/swarm-up.sh, the script behind `make swarm-up`, against the manager."""
        env = {**_clean_env(), "DOCKER_HOST": self.cluster.manager.url}
        return subprocess.run(
            [str(ROOT / "scripts/swarm-up.sh"), str(env_file or self.env_file), STACK],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def down(self) -> None:
        m = self.cluster.manager
        m.docker("stack", "rm", STACK, check=False)
        client = m.client()
        for s in client.services(filters={"label": f"{container.LABEL_HUB}=gpuhub"}):
            client.remove_service(s["ID"])

        def gone():
            return not any(
                n.client().containers(all=True, filters={"label": container.LABEL_HUB}) for n in self.cluster.nodes
            ) and not client.services(filters={"name": HUB_SERVICE})

        try:
            wait_for(gone, 60, "gpuhub's services and containers gone", interval=1)
        except TimeoutError:
            pass
        for n in self.cluster.nodes:
            n.docker("volume", "rm", "-f", DATA_VOLUME, check=False)

    def _write_settings(self) -> None:
        subprocess.run([str(ROOT / "scripts/make-env.sh"), str(ROOT / ".env.example"), str(self.env_file)], check=True)
        wanted = {
            "GPUHUB_PUBLIC_PORT": str(self.port),
            "GPUHUB_CONFIG_DIR": str(self.config_dir),
            "GPUHUB_DATA_VOLUME": DATA_VOLUME,
            "GPUHUB_DOCKER_SOCKET": self.cluster.manager.sock,
            "GPUHUB_NETWORK": self.cluster.network,
            "GPUHUB_NOTEBOOK_IMAGE": self.image,
            "GPUHUB_GPU_CONFIG": "/srv/gpuhub/config/gpus.json",
            "GPUHUB_MEM_LIMIT": "1G",
            "GPUHUB_SHM_SIZE": "256M",
            "GPUHUB_IDLE_TIMEOUT": "0",
            "GPUHUB_SWARM_HOME_ROOT": str(self.home_root),
            "GPUHUB_RECONCILE_INTERVAL": "3",
            "GPUHUB_SWARM_NODE_SETTLE": "6",
            **self.settings,
        }
        lines = []
        for line in self.env_file.read_text().splitlines():
            key = line.split("=", 1)[0]
            lines.append(f"{key}={wanted.pop(key)}" if key in wanted else line)
        lines += [f"{k}={v}" for k, v in wanted.items()]
        self.env_file.write_text("\n".join(lines) + "\n")

    def setting(self, name: str) -> str:
        return [ln.split("=", 1)[1] for ln in self.env_file.read_text().splitlines() if ln.startswith(name + "=")][-1]

    def _admin_token(self) -> str:
        r = requests.post(
            f"{self.url}/hub/api/users/admin/tokens",
            json={
                "auth": {"username": "admin", "password": self.setting("GPUHUB_ADMIN_PASSWORD")},
                "expires_in": 7200,
                "note": "swarm deployment tests",
            },
            timeout=30,
        )
        r.raise_for_status()
        return r.json()["token"]

    # --- the hub ----------------------------------------------------------------------------
    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/hub/health", timeout=2).ok
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout: float = 120) -> None:
        try:
            wait_for(self.healthy, timeout, "the hub answering", interval=1)
        except TimeoutError:
            raise AssertionError(f"the hub did not answer within {timeout} s:\n{self.hub_log()}") from None

    def hub_task(self) -> dict | None:
        tasks = self.cluster.manager.client().tasks(filters={"service": HUB_SERVICE, "desired-state": "running"})
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        return running[0] if running else None

    def hub_container(self) -> str:
        task = self.hub_task()
        assert task is not None, "no running hub task"
        return task["Status"]["ContainerStatus"]["ContainerID"]

    def hub_log(self, tail: int = 60) -> str:
        proc = self.cluster.manager.docker("service", "logs", "--raw", "--tail", str(tail), HUB_SERVICE, check=False)
        return (proc.stdout or "") + (proc.stderr or "")

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, **kwargs)

    def start_server(self, user: str, profile: str, server: str = "") -> requests.Response:
        self.api("POST", "/users", json={"usernames": [user]})
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        return self.api("POST", path, json={"profile": profile})

    def server(self, user: str) -> dict | None:
        return (self.api("GET", f"/users/{user}").json().get("servers") or {}).get("")

    def wait_ready(self, user: str, timeout: float = 240) -> dict:
        def ready():
            s = self.server(user)
            if s is None:
                raise AssertionError(f"server of {user} failed to start:\n{self.hub_log(20)}")
            return s if s.get("ready") else None

        return wait_for(ready, timeout, f"server of {user} ready", interval=1)

    def stop_server(self, user: str, timeout: float = 90) -> None:
        r = self.api("DELETE", f"/users/{user}/server")
        assert r.status_code in (202, 204), r.text
        wait_for(lambda: self.server(user) is None, timeout, f"server of {user} stopped", interval=0.5)

    def gpu_map(self) -> dict[str, dict]:
        """Device UUID -> its row in the hub's GPU map (holder, quarantine)."""
        r = self.api("GET", "/gpuhub/devices")
        r.raise_for_status()
        return {d["uuid"]: d for gpu in r.json()["gpus"] for d in gpu["devices"]}

    def ledger(self) -> dict[str, str]:
        """Device UUID -> "user/server" holding it, as the hub says."""
        return {
            uuid: f"{row['holder']['user']}/{row['holder']['server']}"
            for uuid, row in self.gpu_map().items()
            if row.get("holder")
        }

    def only_on(self, nodes: list[SwarmNode], timeout: float = 120) -> None:
        """Only these nodes take new servers (the others paused); returns once the hub hands out
        exactly their devices (a node back from pause is trusted after GPUHUB_SWARM_NODE_SETTLE)."""
        m = self.cluster.manager
        for n in self.cluster.nodes:
            m.docker("node", "update", "--availability", "active" if n in nodes else "pause", n.node_id)
        usable = {u for n in nodes for u in n.gpus}

        def seen() -> bool:
            return all(bool(row["quarantine"]) != (uuid in usable) for uuid, row in self.gpu_map().items())

        try:
            wait_for(seen, timeout, f"the hub using only {', '.join(n.name for n in nodes)}", interval=1)
        except TimeoutError:
            states = {n.name: n for n in self.cluster.manager.client().nodes()}
            raise AssertionError(f"{states}\n{self.hub_log(40)}") from None

    # --- the engine's word ---------------------------------------------------------------------
    def services(self) -> list[dict]:
        return self.cluster.manager.client().services(filters={"label": f"{container.LABEL_HUB}=gpuhub"})

    def engine_holders(self) -> dict[str, tuple[str, str, str]]:
        """Device UUID -> (owner, node name, container id) for every running notebook container on
        every node, from each node's own engine: its environment as the runtime saw it."""
        found: dict[str, tuple[str, str, str]] = {}
        for node in self.cluster.nodes:
            try:
                containers = node.client().containers(filters={"label": container.LABEL_HUB})
            except Exception:
                continue  # a node that is down holds what it held; the caller decides
            for c in containers:
                info = node.client().inspect_container(c["Id"])
                owner = f"{c['Labels'].get(container.LABEL_USER, '')}/{c['Labels'].get(container.LABEL_SERVER, '')}"
                for uuid in swarm.env_devices(info["Config"].get("Env") or ()):
                    assert uuid not in found, f"{uuid} is used by {found[uuid]} and {owner} on {node.name}"
                    found[uuid] = (owner, node.name, c["Id"])
        return found

    def node_of_device(self) -> dict[str, SwarmNode]:
        return {uuid: node for node in self.cluster.nodes for uuid in node.gpus}


def unique_users(count: int, tag: str = "") -> list[str]:
    run = secrets.token_hex(2)
    return [f"sw{tag}{run}-{i}" for i in range(count)]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DOCKER_HOST")}
