"""Spawn storm: N users press "Start" at once. How long until each server is ready?

Measures time-to-ready on this host for
  floor    `docker run` of the very server gpuhub's spawner starts: the command, environment and
           user read from a container it started, against a stand-in of the hub's API (the
           server checks the hub at start): what Docker and the Jupyter server alone cost
  stock    stock dockerspawner.DockerSpawner (same image, limits, volumes, hardening)
  gpuhub   spawner.GPUDockerSpawner with the production jupyterhub_config.py
The variants take turns over --rounds rounds, the order rotating each round so no variant always
meets a colder or warmer host. Each round reports median / p95 / max and their ratios to that
round's floor; the end reports the medians over all rounds. Hub variants start servers through
the REST API and take "ready" from the hub's progress stream.

    python -m benchmarks.spawn_storm [--users 16] [--rounds 3] [--image gpuhub/notebook:cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import docker
import jupyterhub
import requests

from harness.hub import TEST_GATEWAY, TEST_NETWORK, Hub, ensure_network, user_container

VARIANTS = ("floor", "stock", "gpuhub")
HUB_ENV = {"GPUHUB_MEM_LIMIT": "8G", "GPUHUB_SHM_SIZE": "2G", "GPUHUB_PIDS_LIMIT": "4096"}
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


def remove_volumes(client, names: list[str]) -> None:
    for name in names:
        try:
            client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass


# --- the floor ------------------------------------------------------------------------------
def spawner_server(client, image: str, name: str) -> dict:
    """Entrypoint, command, environment and user of the server gpuhub's spawner starts, from its container."""
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp), image, env=HUB_ENV).start()
        try:
            hub.start_server(name)
            hub.wait_ready(name, timeout=300)
            config = user_container(client, name).attrs["Config"]
            hub.stop_server(name)
        finally:
            hub.stop()
            remove_volumes(client, [f"jupyterhub-user-{name}"])
    return {
        "entrypoint": config["Entrypoint"] or [],
        "cmd": config["Cmd"] or [],
        "env": dict(item.split("=", 1) for item in config["Env"]),
        "user": config["User"],
        # The hub the spawner pointed the server at; the floor swaps in its stand-in.
        "hub_api": f"http://{TEST_GATEWAY}:{hub.env['GPUHUB_HUB_PORT']}",
    }


class HubAPIStandIn(BaseHTTPRequestHandler):
    """Answers the server's start-up check of its hub and its activity reports, nothing else."""

    def _answer(self) -> None:
        self.send_response(200)
        self.send_header("X-JupyterHub-Version", jupyterhub.__version__)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def storm_floor(client, image: str, names: list[str], server: dict, hub_api: str) -> list[float]:
    env = {k: v.replace(server["hub_api"], hub_api) for k, v in server["env"].items()}
    service = urlsplit(env["JUPYTERHUB_SERVICE_URL"])
    probe_path = env.get("JUPYTERHUB_SERVICE_PREFIX", "/") + "api"
    entrypoint, *entry_args = server["entrypoint"] or [None]

    def one(name: str) -> float:
        env_args = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        t0 = time.monotonic()
        cid = subprocess.run(
            ["docker", "run", "-d", "--name", name, "--network", TEST_NETWORK, "--user", server["user"]]
            + ["--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--shm-size", "2G"]
            + ["--pids-limit", "4096", "--memory", "8G", "-v", f"{name}:/home/jovyan"]
            + (["--entrypoint", entrypoint] if entrypoint else [])
            + env_args
            + [image, *entry_args, *server["cmd"]],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        ip = client.api.inspect_container(cid)["NetworkSettings"]["Networks"][TEST_NETWORK]["IPAddress"]
        # Ready as the spawner judges it: the server answers HTTP at all.
        while True:
            try:
                requests.get(f"http://{ip}:{service.port}{probe_path}", timeout=2)
                return time.monotonic() - t0
            except requests.ConnectionError:
                if client.api.inspect_container(cid)["State"]["Status"] == "exited":
                    logs = client.api.logs(cid, tail=5).decode(errors="replace")
                    raise RuntimeError(f"floor server {name} exited:\n{logs}") from None
                time.sleep(0.05)

    try:
        with ThreadPoolExecutor(len(names)) as pool:
            return list(pool.map(one, names))
    finally:
        for name in names:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        remove_volumes(client, names)


# --- the hubs --------------------------------------------------------------------------------
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


def run_hub_variant(client, image: str, names: list[str], extra_config: str = "") -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp), image, env=HUB_ENV, extra_config=extra_config).start()
        try:
            return storm_hub(hub, names)
        finally:
            hub.stop()
            remove_volumes(client, [f"jupyterhub-user-{name}" for name in names])


# --- report ---------------------------------------------------------------------------------
def row(label: str, variant: str, r: dict[str, float], floor: dict[str, float]) -> str:
    ratios = " / ".join(f"{r[k] / floor[k]:.2f}x" for k in ("median", "p95", "max"))
    return f"{label:>7} {variant:8} {r['median']:7.1f}s {r['p95']:7.1f}s {r['max']:7.1f}s   {ratios}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which every variant storms once")
    parser.add_argument("--image", default="gpuhub/notebook:cpu")
    parser.add_argument("--settle", type=float, default=5, help="seconds of quiet between storms")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    client = docker.from_env()
    ensure_network(client)
    run = uuid.uuid4().hex[:4]
    print("reading the server command gpuhub's spawner starts ...", flush=True)
    server = spawner_server(client, args.image, f"storm{run}cal")
    print(f"  {' '.join(server['entrypoint'] + server['cmd'])} (as {server['user']})", flush=True)
    standin = ThreadingHTTPServer((TEST_GATEWAY, 0), HubAPIStandIn)
    threading.Thread(target=standin.serve_forever, daemon=True).start()
    hub_api = f"http://{TEST_GATEWAY}:{standin.server_address[1]}"

    header = f"{'round':>7} {'variant':8} {'median':>8} {'p95':>8} {'max':>8}   ratio to floor (median / p95 / max)"
    rounds: list[dict[str, dict[str, float]]] = []
    pooled: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        for n in range(args.rounds):
            order = VARIANTS[n % 3 :] + VARIANTS[: n % 3]
            results: dict[str, dict[str, float]] = {}
            for variant in order:
                names = [f"storm{run}r{n}{variant[:2]}{i:02d}" for i in range(args.users)]
                print(f"round {n + 1}/{args.rounds}, {variant}: starting {args.users} servers at once ...", flush=True)
                if variant == "floor":
                    times = storm_floor(client, args.image, names, server, hub_api)
                elif variant == "stock":
                    times = run_hub_variant(client, args.image, names, STOCK_OVERLAY)
                else:
                    times = run_hub_variant(client, args.image, names)
                results[variant] = summary(times)
                pooled[variant] += times
                time.sleep(args.settle)  # let the host settle between storms
            rounds.append(results)
            print(header)
            for variant in VARIANTS:
                print(row(str(n + 1), variant, results[variant], results["floor"]))
    finally:
        standin.shutdown()

    cpus = subprocess.getoutput("nproc")
    print(f"\nSpawn storm, N={args.users}, image {args.image}, {cpus} CPUs, {args.rounds} rounds (order rotating)")
    print(header)
    for n, results in enumerate(rounds, 1):
        for variant in VARIANTS:
            print(row(str(n), variant, results[variant], results["floor"]))
    overall = {v: summary(pooled[v]) for v in VARIANTS}
    print("overall: every server of every round")
    for variant in VARIANTS:
        print(row("all", variant, overall[variant], overall["floor"]))
    print("median over rounds of the ratio to that round's floor (median / p95 / max):")
    for variant in VARIANTS[1:]:
        ratios = [statistics.median(r[variant][k] / r["floor"][k] for r in rounds) for k in ("median", "p95", "max")]
        print(f"{'':>7} {variant:8} " + " / ".join(f"{x:.2f}x" for x in ratios))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"users": args.users, "command": server["cmd"], "rounds": rounds, "overall": overall}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
