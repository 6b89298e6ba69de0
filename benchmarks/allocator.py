"""Allocator decision time at scale (pure ledger, no Docker).

10,000 devices (whole GPUs of 4 models and MIG slices of 3 profiles), filled up,
with 1,000 waiters queued, every lease bound to a container; then timed: each
container's end as the engine confirms it (`gone`, which ends the lease and hands
the devices to the next waiter), each new request that must queue, and each cancel.
Goal: p99 <= 1 ms per decision.

    python -m benchmarks.allocator [--devices 10000] [--waiters 1000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from spawner.allocator import Ledger
from spawner.devices import Device, Request

MODELS = ["A100-80GB", "H100-80GB", "H200-141GB", "L40S"]
PROFILES = ["1g.10gb", "3g.40gb", "7g.80gb"]


def inventory(n: int) -> list[Device]:
    devices = []
    for i in range(n):
        if i % 2:
            devices.append(Device(f"GPU-{i:06d}", MODELS[i % 4], index=i))
        else:
            devices.append(
                Device(
                    f"MIG-{i:06d}",
                    "H100-80GB",
                    mig_profile=PROFILES[i % 3],
                    parent=f"GPU-p{i // 7}",
                    index=i % 7,
                    parent_index=i // 7,
                )
            )
    return devices


def requests() -> list[Request]:
    return [Request(1), Request(2), Request(1, model="H100-80GB")] + [Request(1, mig_profile=p) for p in PROFILES]


def bind(ledger: Ledger, lease) -> str:
    """The granted server's container is created: bind the lease to it (not timed)."""
    container = f"c-{lease.id}"
    ledger.bind(lease.id, container)
    return container


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--waiters", type=int, default=1_000)
    parser.add_argument("--ops", type=int, default=5_000)
    args = parser.parse_args()
    rng = random.Random(42)
    kinds = requests()
    ledger = Ledger(inventory(args.devices))
    owner = 0
    while ledger.free():  # fill the host
        kind = rng.choice(kinds)
        lease = ledger.request(f"u{owner}/", kind)
        if lease is None:
            ledger.cancel(f"u{owner}/")
        else:
            ledger.bind(lease.id, f"c{owner}")
        owner += 1
    for _ in range(args.waiters):
        assert ledger.request(f"u{owner}/", rng.choice(kinds)) is None
        owner += 1
    timings = {"gone (hands on)": [], "request (queues)": [], "cancel": []}
    holders = list(ledger.by_container)
    queue_lengths = []
    for _ in range(args.ops):
        # Each step takes one waiter out (a grant or a cancel) and adds one, so the
        # queue stays near --waiters for the whole run.
        if rng.random() < 0.8:
            victim = holders.pop(rng.randrange(len(holders)))
            t = time.perf_counter()
            grants = ledger.gone(victim)
            timings["gone (hands on)"].append(time.perf_counter() - t)
            holders += [bind(ledger, g) for g in grants]
        else:
            who = rng.choice(ledger.waiting()).owner
            t = time.perf_counter()
            grants = ledger.cancel(who)
            timings["cancel"].append(time.perf_counter() - t)
            holders += [bind(ledger, g) for g in grants]
        while len(ledger.waiting()) < args.waiters:
            t = time.perf_counter()
            lease = ledger.request(f"u{owner}/", rng.choice(kinds))
            timings["request (queues)"].append(time.perf_counter() - t)
            if lease:
                holders.append(bind(ledger, lease))
            owner += 1
        queue_lengths.append(len(ledger.waiting()))
    waiters = f"{min(queue_lengths)}-{max(queue_lengths)}"
    print(f"Allocator: {args.devices} devices, {waiters} waiters, {args.ops} steps")
    print(f"{'decision':22} {'n':>6} {'median':>10} {'p99':>10} {'max':>10}")
    worst = 0.0
    for name, values in timings.items():
        p99 = pct(values, 0.99)
        worst = max(worst, p99)
        print(
            f"{name:22} {len(values):6d} {statistics.median(values) * 1e3:8.3f}ms {p99 * 1e3:8.3f}ms "
            f"{max(values) * 1e3:8.3f}ms"
        )
    print(f"p99 goal 1 ms: {'met' if worst <= 1e-3 else 'NOT met'} (worst p99 {worst * 1e3:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
