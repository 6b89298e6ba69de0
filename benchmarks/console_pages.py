"""Console pages: does every page of the lab admin console render in under 300 ms at lab scale?

Goal (issue 12): every page (its HTML and the JSON it loads) in under 300 ms for 64 devices and
500 users, on this machine. Reported: p50 and p95 per page, measured in one run; the goal is met
when every page's p95 is at most 300 ms.

One real hub (harness.Hub, the production jupyterhub_config.py, `oidc` mode so that the lab-admin
role exists; the OIDC provider of tests/integration/oidc.py runs but nobody signs in through it)
with the 64 devices of benchmarks/telemetry_overhead.py's MIG layout (8 H100s with 7 MIG slices
each, 8 whole H100s) as a static inventory, the stand-in pynvml answering for them, telemetry every
second. 500 users in 20 groups, each group with a quota (half of them with GPU-hour budgets);
--holders of them hold a device (real notebook containers) and --waiters more wait for one (after
every MIG slice is taken); 4 past GPU leases per user in the usage records, written through the
hub's own UsageStore, with mixed end reasons (GPU-idle culling among them).

A lab admin's requests, with their own hub token as the console's JavaScript makes them (one page
view = GET of the page's HTML + GET of its JSON; Usage's JSON is the 30-day report by user):

    python -m benchmarks.console_pages [--rounds 40] [--holders 8] [--json FILE]

The hub's id and container prefix are the benchmark's own and its orphan removal is off, so it
never touches another hub's containers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker
import requests

from benchmarks.telemetry_overhead import SLICE, devices, gpu_config
from harness.hub import ensure_network, free_port
from spawner import quota, usage
from spawner.container import LABEL_HUB
from tests.integration import oidc

GOAL_MS = 300
STANDIN = Path(__file__).resolve().parents[1] / "tests" / "hardware" / "nvml_standin"
HUB_ID = "gpuhub-bench-console"
CONSOLE = "/services/gpuhub/"
PAGES = {"gpus": "gpus", "queue": "queue", "quotas": "quotas", "usage": "usage?since=30d&by=user"}
GROUPS = 20
REASONS = ["user", "gpu-idle", "idle", "time-limit", "budget", "admin"]


def group_quota(i: int) -> dict:
    q = {"profiles": "*", "max_devices_per_user": 1, "max_devices_per_group": 8, "priority": i % 3}
    if i % 2 == 0:
        q |= {"gpu_hours_per_user": "20/week", "gpu_hours_per_group": "500/month"}
    quota.parse(q, f"bench-g{i:02d}")  # a quota the spawner's own schema accepts
    return {quota.PROPERTY: q}


def past_leases(store: usage.UsageStore, users: list[str], inventory: list[dict], now: float) -> int:
    records = []
    for n, user in enumerate(users):
        for k in range(4):
            device = inventory[(n * 4 + k) % len(inventory)]
            start = now - 86400 * ((n + k) % 25 + 1) - 3600 * k
            records.append(
                usage.Record(
                    lease_id=f"bench-{n}-{k}",
                    device=device["uuid"],
                    user=user,
                    server="",
                    charged_to=f"bench-g{n % GROUPS:02d}",
                    profile="mig" if device.get("mig_profile") else "gpu",
                    model=device["model"],
                    mig_profile=device.get("mig_profile", ""),
                    start=start,
                )
            )
    store.opened(records)
    for i, r in enumerate(records):
        store.closed(r.lease_id, r.start + 1800 + 600 * (i % 7), REASONS[i % len(REASONS)])
    return len(records)


def timed(session: requests.Session, url: str) -> float:
    t0 = time.perf_counter()
    r = session.get(url, timeout=30)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"GET {url} answered {r.status_code}: {r.text[:300]}")
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=os.environ.get("GPUHUB_TEST_IMAGE", "gpuhub/notebook:cpu"))
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--holders", type=int, default=8, help="users holding a device (one container each)")
    parser.add_argument("--waiters", type=int, default=4, help="users waiting for a GPU (no container)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    ensure_network(docker.from_env())
    nvml_layout, inventory = devices("mig", 0.15)
    users = [f"bench{i:03d}" for i in range(args.users)]
    admin = "bench-labadmin"
    with tempfile.TemporaryDirectory(prefix="gpuhub-console-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "gpus.json").write_text(json.dumps(gpu_config(inventory)))
        (workdir / "nvml.json").write_text(json.dumps(nvml_layout))
        hub, provider = oidc.oidc_hub(workdir, args.image)
        hub.env.update(
            {
                "GPUHUB_GPU_CONFIG": str(workdir / "gpus.json"),
                "GPUHUB_CONSOLE_PORT": str(free_port()),
                "GPUHUB_TELEMETRY_INTERVAL": "1",
                "GPUHUB_MEM_LIMIT": "512M",
                "GPUHUB_FAKE_NVML": str(workdir / "nvml.json"),
                "PYTHONPATH": os.pathsep.join(p for p in (str(STANDIN), os.environ.get("PYTHONPATH", "")) if p),
            }
        )
        hub.config.write_text(
            hub.config.read_text()
            + f"c.GPUDockerSpawner.hub_id = {HUB_ID!r}\n"
            + 'c.DockerSpawner.prefix = "gpuhubbenchcon"\nc.GPUDockerSpawner.orphan_grace = 0\n'
        )
        try:
            hub.start()
            print(f"hub up; {args.users} users in {GROUPS} groups, usage records ...", flush=True)
            hub.api("POST", "/users", json={"usernames": users + [admin]}).raise_for_status()
            hub.api("POST", "/groups/lab-admins")
            hub.api("POST", "/groups/lab-admins/users", json={"users": [admin]}).raise_for_status()
            for g in range(GROUPS):
                name = f"bench-g{g:02d}"
                members = users[g::GROUPS]
                hub.api("POST", f"/groups/{name}", json={"users": members}).raise_for_status()
                hub.api("PUT", f"/groups/{name}/properties", json=group_quota(g)).raise_for_status()
            db_url = f"sqlite:///{hub.data_dir / 'jupyterhub.sqlite'}"
            store = usage.UsageStore(db_url, HUB_ID)
            n_records = past_leases(store, users, inventory, time.time())
            store.close()
            print(f"{n_records} past leases; {args.holders} holders start ...", flush=True)
            holders = users[: args.holders]
            for u in holders:
                r = hub.start_server(u, options={"profile": "gpu"})
                assert r.status_code in (201, 202), r.text
            for u in holders:
                hub.wait_ready(u, timeout=300)
            # Every whole GPU not held and every MIG slice taken by profile would need containers:
            # instead the waiters ask for more whole GPUs than remain free.
            free_whole = 8 - args.holders
            waiters = users[args.holders : args.holders + free_whole + args.waiters]
            for u in waiters:
                hub.start_server(u, options={"profile": "gpu"})
            token = hub.api("POST", f"/users/{admin}/tokens", json={"expires_in": 3600}).json()["token"]
            session = requests.Session()
            session.headers["Authorization"] = f"token {token}"
            base = f"{hub.url}{CONSOLE}"
            gpus = session.get(f"{base}api/gpus", timeout=30).json()
            queue = session.get(f"{base}api/queue", timeout=30).json()
            if "queue" not in gpus.get("summary", {}) and "queue" not in queue:
                raise RuntimeError(f"the console answered {gpus if 'summary' not in gpus else queue}")
            queue = queue["queue"]
            print(
                f"console sees {gpus['summary']} and {len(queue)} waiting; warm-up, then {args.rounds} rounds",
                flush=True,
            )
            for page, data in PAGES.items():  # warm-up: first requests fill caches (token lookups, templates)
                timed(session, base + page)
                timed(session, base + "api/" + data)
            times: dict[str, list[float]] = {page: [] for page in PAGES}
            parts: dict[str, list[float]] = {f"{page} {k}": [] for page in PAGES for k in ("html", "json")}
            for _ in range(args.rounds):
                for page, data in PAGES.items():
                    html = timed(session, base + page)
                    js = timed(session, base + "api/" + data)
                    times[page].append(html + js)
                    parts[f"{page} html"].append(html)
                    parts[f"{page} json"].append(js)
            result = {
                "devices": len(inventory),
                "users": args.users,
                "holders": args.holders,
                "waiting": len(queue),
                "usage_records": n_records,
                "rounds": args.rounds,
                "goal_ms": GOAL_MS,
                "pages": {
                    page: {
                        "p50_ms": round(1000 * statistics.median(v), 1),
                        "p95_ms": round(1000 * pct(v, 0.95), 1),
                        "html_p50_ms": round(1000 * statistics.median(parts[f"{page} html"]), 1),
                        "json_p50_ms": round(1000 * statistics.median(parts[f"{page} json"]), 1),
                    }
                    for page, v in times.items()
                },
            }
            result["met"] = all(p["p95_ms"] <= GOAL_MS for p in result["pages"].values())
            for u in holders:
                hub.stop_server(u)
        finally:
            hub.stop()
            provider.stop()
            client = docker.from_env()
            for c in client.containers.list(all=True, filters={"label": f"{LABEL_HUB}={HUB_ID}"}):
                c.remove(force=True)

    print(f"\n{len(inventory)} devices (8 GPUs x 7 {SLICE} + 8 GPUs), {args.users} users, {n_records} usage records")
    print(f"{'page':8} {'p50 ms':>8} {'p95 ms':>8}   (HTML p50 + JSON p50)")
    for page, p in result["pages"].items():
        print(f"{page:8} {p['p50_ms']:8.1f} {p['p95_ms']:8.1f}   ({p['html_p50_ms']} + {p['json_p50_ms']})")
    print(f"goal: every page's p95 <= {GOAL_MS} ms: {'met' if result['met'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
