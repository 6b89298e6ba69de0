"""Spawn storm: N users press "Start" at once. How long until each server is ready?

Measures, in one run on this host, time-to-ready for
  floor    the same image's Jupyter server started straight with `docker run`
  stock    stock dockerspawner.DockerSpawner (same image, limits, volumes, hardening)
  gpuhub   spawner.GPUDockerSpawner with the production jupyterhub_config.py
and reports median / p95 / max and their ratios to the floor. Hub variants start
servers through the REST API and take "ready" from the hub's progress stream.

    python benchmarks/spawn_storm.py [--users 16] [--image gpuhub/notebook:cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.hub import TEST_NETWORK, Hub, ensure_network  # noqa: E402

STOCK_OVERLAY = """
c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.prefix = "gpuhubstock"
c.DockerSpawner.remove = True
c.DockerSpawner.volumes = {"jupyterhub-user-{username}": "/home/jovyan"}
c.DockerSpawner.extra_create_kwargs = {"user": "1000:100"}
c.DockerSpawner.extra_host_config = {
    "shm_size": "2G", "pids_limit": 4096, "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
}
"""


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def storm_floor(client, image: str, names: list[str]) -> list[float]:
    def one(name: str) -> float:
        t0 = time.monotonic()
        cid = subprocess.run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--network",
                TEST_NETWORK,
                "--user",
                "1000:100",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges:true",
                "--shm-size",
                "2G",
                "--pids-limit",
                "4096",
                "--memory",
                "8G",
                "-v",
                f"{name}:/home/jovyan",
                image,
                "jupyter",
                "lab",
                "--ip=0.0.0.0",
                "--port=8888",
                "--no-browser",
                "--ServerApp.token=",
                "--ServerApp.password=",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        ip = client.api.inspect_container(cid)["NetworkSettings"]["Networks"][TEST_NETWORK]["IPAddress"]
        while True:
            try:
                requests.get(f"http://{ip}:8888/api", timeout=2)
                return time.monotonic() - t0
            except requests.ConnectionError:
                time.sleep(0.05)

    try:
        with ThreadPoolExecutor(len(names)) as pool:
            return list(pool.map(one, names))
    finally:
        for name in names:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
            subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)


def storm_hub(hub: Hub, names: list[str]) -> list[float]:
    hub.api("POST", "/users", json={"usernames": names}).raise_for_status()

    def one(name: str) -> float:
        t0 = time.monotonic()
        r = hub.api("POST", f"/users/{name}/server")
        if r.status_code not in (201, 202):
            raise RuntimeError(f"spawn of {name} refused: {r.status_code} {r.text}")
        hub.wait_ready(name, timeout=300)
        return time.monotonic() - t0

    with ThreadPoolExecutor(len(names)) as pool:
        times = list(pool.map(one, names))
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(hub.stop_server, names))
    return times


def run_hub_variant(image: str, names: list[str], extra_config: str = "") -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(
            Path(tmp),
            image,
            env={"GPUHUB_MEM_LIMIT": "8G", "GPUHUB_SHM_SIZE": "2G", "GPUHUB_PIDS_LIMIT": "4096"},
            extra_config=extra_config,
        ).start()
        try:
            return storm_hub(hub, names)
        finally:
            hub.stop()
            client = docker.from_env()
            for name in names:
                for volume in (f"jupyterhub-user-{name}",):
                    try:
                        client.volumes.get(volume).remove(force=True)
                    except docker.errors.NotFound:
                        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--image", default="gpuhub/notebook:cpu")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    client = docker.from_env()
    ensure_network(client)
    run = uuid.uuid4().hex[:4]
    results = {}
    for variant in ("floor", "stock", "gpuhub"):
        names = [f"storm{run}{variant[:2]}{i:02d}" for i in range(args.users)]
        print(f"{variant}: starting {args.users} servers at once ...", flush=True)
        if variant == "floor":
            times = storm_floor(client, args.image, names)
        elif variant == "stock":
            times = run_hub_variant(args.image, names, STOCK_OVERLAY)
        else:
            times = run_hub_variant(args.image, names)
        results[variant] = summary(times)
        time.sleep(5)  # let the host settle between variants

    floor = results["floor"]
    print(f"\nSpawn storm, N={args.users}, image {args.image}, {subprocess.getoutput('nproc')} CPUs")
    print(f"{'variant':8} {'median':>8} {'p95':>8} {'max':>8}   ratio to floor (median / p95 / max)")
    for variant, r in results.items():
        ratios = " / ".join(f"{r[k] / floor[k]:.2f}x" for k in ("median", "p95", "max"))
        print(f"{variant:8} {r['median']:7.1f}s {r['p95']:7.1f}s {r['max']:7.1f}s   {ratios}")
    if args.json:
        Path(args.json).write_text(json.dumps({"users": args.users, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
