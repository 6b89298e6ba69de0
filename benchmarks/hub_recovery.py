"""Hub recovery: how long after `docker kill -s KILL gpuhub-hub` until the hub is whole again?

Runs on the compose deployment users run (`make up`, with settings of its own, see
harness/compose.py) with N running user servers, some holding stand-in GPUs. Each run
SIGKILLs the hub container and times, from the kill, until Docker has restarted it, until it
answers /hub/health, until every server is listed as ready, and until its GPU ledger is rebuilt
(the gauge gpuhub_devices_held sums to the devices held); "recovered" is when all of that holds
at once. Nothing here touches the hub: compose's hub-watchdog starts it again, as Docker's restart
policy leaves a killed container down.

    python -m benchmarks.hub_recovery [--servers 32] [--gpus 16] [--runs 5] [--image gpuhub/notebook:cpu]

Needs the stand-in NVIDIA hook on dockerd's PATH (.ci/start-dockerd) and no other gpuhub
deployment on this Docker engine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from harness.compose import (
    Deployment,
    engine_view,
    epoch,
    holders,
    standin_gpus,
    unique_users,
)

GOAL_S = 5.0
# Docker doubles its restart delay for a container that ran less than 10 s; waiting this long
# between runs keeps every run at the first delay (100 ms), as after a real crash.
SETTLE_S = 12.0
POLL_S = 0.1


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def start_servers(deployment: Deployment, plan: dict[str, str], parallel: int) -> None:
    def one(item: tuple[str, str]) -> None:
        user, profile = item
        deployment.start_server(user, profile)
        deployment.wait_ready(user, timeout=600)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, plan.items()))


def measure(deployment: Deployment, servers: set[tuple[str, str]], devices: int, timeout: float) -> dict[str, float]:
    """One SIGKILL; seconds from the kill to each milestone."""
    killed_at = deployment.kill_hub()
    marks: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while "recovered" not in marks:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not recovered within {timeout} s: {marks}\n{deployment.hub_log(since=killed_at)}")
        if "restarted" not in marks:
            state = deployment.hub_state()
            if state["Running"] and epoch(state["StartedAt"]) > killed_at:
                marks["restarted"] = time.time() - killed_at
        elif deployment.healthy():
            marks.setdefault("health", time.time() - killed_at)
            try:
                listed = deployment.servers()
                ready = all(listed.get(key, {}).get("ready") for key in servers)
                ledger = deployment.devices_held_metric() == devices
            except requests.RequestException:
                ready = ledger = False
            now = time.time() - killed_at
            if ready:
                marks.setdefault("all ready", now)
            if ledger:
                marks.setdefault("ledger", now)
            if ready and ledger:
                marks["recovered"] = now
        time.sleep(POLL_S)
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=32, help="running user servers (default 32)")
    parser.add_argument("--gpus", type=int, default=16, help="stand-in GPUs, one per server, all held (default 16)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="gpuhub/notebook:cpu", help="notebook image of the user servers")
    parser.add_argument("--parallel", type=int, default=8, help="servers started at once while setting up")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a run may take to recover")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not 0 <= args.gpus <= args.servers:
        parser.error("--gpus must be between 0 and --servers")

    with tempfile.TemporaryDirectory(prefix="gpuhub-recovery-") as tmp:
        deployment = Deployment(Path(tmp), args.image, standin_gpus(args.gpus))
        try:
            print("make up (compose deployment with its own settings) ...", flush=True)
            deployment.up()
            users = unique_users(args.servers, "rec")
            plan = {u: ("gpu" if i < args.gpus else "cpu") for i, u in enumerate(users)}
            print(f"starting {args.servers} servers ({args.gpus} with a stand-in GPU) ...", flush=True)
            t0 = time.monotonic()
            start_servers(deployment, plan, args.parallel)
            print(f"  all ready in {time.monotonic() - t0:.0f} s", flush=True)
            servers = {(u, "") for u in users}
            before = engine_view(deployment.client)
            held = holders(before)
            assert len(held) == args.gpus, f"Docker gives {len(held)} devices to user containers, not {args.gpus}"

            runs = []
            for i in range(args.runs):
                time.sleep(SETTLE_S)
                marks = measure(deployment, servers, args.gpus, args.timeout)
                after = engine_view(deployment.client)
                assert set(after) >= set(before) and holders(after) == held, "user containers or devices changed"
                runs.append(marks)
                print(f"  run {i + 1}: recovered in {marks['recovered']:.2f} s", flush=True)
        finally:
            deployment.down()

    columns = ("restarted", "health", "all ready", "ledger", "recovered")
    print(
        f"\nHub recovery after SIGKILL: {args.servers} running servers ({args.gpus} holding a stand-in GPU), "
        f"compose deployment, image {args.image}, {subprocess.getoutput('nproc')} CPUs"
    )
    print("seconds from `docker kill -s KILL gpuhub-hub` to:")
    print(f"{'run':>6} " + " ".join(f"{c:>10}" for c in columns))
    for i, marks in enumerate(runs, 1):
        print(f"{i:>6} " + " ".join(f"{marks[c]:>9.2f}s" for c in columns))
    for name, stat in (("median", statistics.median), ("p95", p95)):
        print(f"{name:>6} " + " ".join(f"{stat([m[c] for m in runs]):>9.2f}s" for c in columns))
    worst = p95([m["recovered"] for m in runs])
    print(f"\np95 recovered: {worst:.2f} s (goal <= {GOAL_S:.0f} s: {'met' if worst <= GOAL_S else 'MISSED'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"servers": args.servers, "gpus": args.gpus, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
