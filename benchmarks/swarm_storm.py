"""Swarm spawn storm: N users start a server at once on 3 Swarm nodes, and on 1.

The stack is deployed as labs do it (scripts/swarm-up.sh, harness/swarm_stack.py) on the
simulated cluster of harness/swarm.py: 3 nodes, each its own dockerd in its own network
namespace. "1 node" pauses node2 and node3 (Swarm places nothing there), so the same storm runs
through the same hub, manager and images on one node. The servers are CPU servers: Swarm itself
places them (spread over the active nodes), which is what this measures; a GPU server's node is
the ledger's choice, made in microseconds (benchmarks/allocator.py), and its best fit would put
all N on one node anyway.
The variants take turns over --rounds rounds, the order alternating.

Per spawn it reports, from the engines' own timestamps:
  ready       POST /users/NAME/server until the hub says the server is ready
  scheduling  the service's creation on the manager until its container exists on the node:
              what Swarm adds per spawn (`docker run` creates the container at once)
  container   the container's creation until its process started (the node's own work)

All nodes share this host's CPUs, so 3 nodes add no capacity here: the comparison shows what
the orchestration costs, not how a real cluster scales.

    python -m benchmarks.swarm_storm [--users 6] [--rounds 2] [--image gpuhub/notebook:cpu]
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

from benchmarks.spawn_storm import summary
from harness.compose import epoch
from harness.swarm import SwarmCluster, wait_for
from harness.swarm_stack import SwarmDeployment, unique_users
from spawner import container

VARIANTS = ("1 node", "3 nodes")


def storm(hub: SwarmDeployment, names: list[str]) -> dict[str, list[float]]:
    def one(name: str) -> float:
        t0 = time.monotonic()
        r = hub.start_server(name, "cpu")
        if r.status_code not in (201, 202):
            raise RuntimeError(f"spawn of {name} refused: {r.status_code} {r.text}")
        hub.wait_ready(name, timeout=600)
        return time.monotonic() - t0

    with ThreadPoolExecutor(len(names)) as pool:
        ready = list(pool.map(one, names))
    scheduling, starting, nodes = [], [], set()
    by_user = {s["Spec"]["Labels"].get(container.LABEL_USER): s for s in hub.services()}
    for name in names:
        service = by_user[name]
        task = hub.cluster.running_task(service["ID"])
        node = hub.cluster.node_of(task["NodeID"])
        nodes.add(node.name)
        info = node.client().inspect_container(task["Status"]["ContainerStatus"]["ContainerID"])
        scheduling.append(epoch(info["Created"]) - epoch(service["CreatedAt"]))
        starting.append(epoch(info["State"]["StartedAt"]) - epoch(info["Created"]))
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(hub.stop_server, names))
    wait_for(lambda: not hub.services(), 180, "every notebook service removed", interval=1)
    return {"ready": ready, "scheduling": scheduling, "container": starting, "nodes": sorted(nodes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="rounds in which both variants storm once")
    parser.add_argument("--image", default="gpuhub/notebook:cpu")
    parser.add_argument("--settle", type=float, default=5, help="seconds of quiet between storms")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    cluster = SwarmCluster()
    pooled: dict[str, dict[str, list[float]]] = {v: {"ready": [], "scheduling": [], "container": []} for v in VARIANTS}
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        print("starting the simulated 3-node swarm and deploying gpuhub ...", flush=True)
        cluster.up(images=[args.image])
        hub = SwarmDeployment(cluster, Path(tmp), args.image)
        try:
            hub.build_and_load_images()
            hub.up()
            for n in range(args.rounds):
                order = VARIANTS if n % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    hub.only_on(cluster.nodes[: 1 if variant == "1 node" else 3])
                    names = unique_users(args.users, f"b{n}{variant[0]}")
                    print(f"round {n + 1}/{args.rounds}, {variant}: {args.users} servers at once ...", flush=True)
                    result = storm(hub, names)
                    rounds.append({"round": n + 1, "variant": variant, **result})
                    for key in pooled[variant]:
                        pooled[variant][key] += result[key]
                    print(f"  on {', '.join(result['nodes'])}: " + line(result), flush=True)
                    time.sleep(args.settle)
        finally:
            hub.down()
            cluster.down()

    cpus = subprocess.getoutput("nproc")
    print(f"\nSwarm spawn storm, N={args.users} servers, image {args.image}, {cpus} CPUs shared by 3 nodes")
    print(f"{'':8} {'':10} {'median':>8} {'p95':>8} {'max':>8}")
    overall = {v: {k: summary(x) for k, x in pooled[v].items()} for v in VARIANTS}
    for variant in VARIANTS:
        for key, s in overall[variant].items():
            print(f"{variant:8} {key:10} {s['median']:7.2f}s {s['p95']:7.2f}s {s['max']:7.2f}s")
    for key in ("ready", "scheduling"):
        one, three = overall["1 node"][key]["median"], overall["3 nodes"][key]["median"]
        print(f"3 nodes / 1 node, median {key}: {three / one:.2f}x")
    print(
        "Swarm's scheduling overhead per spawn (service created -> container created on its node), median: "
        f"{overall['1 node']['scheduling']['median']:.2f} s on 1 node, "
        f"{overall['3 nodes']['scheduling']['median']:.2f} s on 3 nodes"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"users": args.users, "rounds": rounds, "overall": overall}, indent=2))
    return 0


def line(result: dict) -> str:
    return "   ".join(
        f"{key} median {statistics.median(result[key]):.2f}s max {max(result[key]):.2f}s"
        for key in ("ready", "scheduling", "container")
    )


if __name__ == "__main__":
    sys.exit(main())
