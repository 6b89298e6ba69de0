"""Telemetry overhead: does sampling 64 GPUs slow the hub's REST API?

Goal (issue 11): the hub API's p99 latency under load, with telemetry on, for 64 devices, is at
most 1.05x the same with telemetry off, measured in one run.

Every variant is a real hub (harness.Hub, the production jupyterhub_config.py) with a static
inventory of 64 devices and the stand-in pynvml (tests/hardware/nvml_standin) answering for them,
every NVML call sleeping --latency-ms (real ctypes NVML calls on an H100: 0.08-0.17 ms):

    mig layout    8 H100s with MIG on, 7 x 1g.10gb slices each (56 slices) + 8 H100s without MIG
    whole layout  64 H100s without MIG

All have GPM, so the sampler takes the GPM path (nvmlGpmSampleGet / nvmlGpmMigSampleGet and
nvmlGpmMetricsGet) as on Hopper. The checked-in stand-in looks at its layout file at every NVML
call (so that tests can change a GPU while the hub runs): a stat per call, and a JSON parse whenever
the file changed (at first, every call parsed it: 1.17-1.31x, CPU work under the GIL that real NVML
does not do). The variants run it two ways,
through a small wrapper this benchmark writes into its temporary directory: "memory" (the layout
read once, then held: NVML's cost is the per-call sleep alone, as on a GPU host) and "file" (the
stand-in exactly as tests load it). The wrapper also counts nvmlGpmMetricsGet calls, so the
report says how many samples each hub took. `--profile` only profiles the sampler in this process
(where a sample's CPU time goes, and how long a sample takes beside a CPU-bound thread).

Variants (--variants): telemetry off (GPUHUB_TELEMETRY_INTERVAL=0) and on at some interval with
either stand-in. The default is off; off again, as an A/A control that shows how far the ratio
moves when nothing differs; on at 1 s (ten times the default rate: the harsher case) with each
stand-in; and on at the default 10 s. All hubs run at once on their own ports; each has --users
users and its GPU service started (GET /hub/api/gpuhub/usage, as a service with the
custom:gpuhub:read-usage scope), and gets --warmup seconds of unrecorded load. Then, over --rounds
rounds, each variant in turn gets --duration seconds of recorded load while every other hub
process is paused (SIGSTOP, so that an idle hub's telemetry takes no CPU from the hub being
measured; a paused hub's due sample runs as soon as it resumes); the order reverses every round
(off, ..., on, then on, ..., off) so that drift of the host cancels out. A load is --clients
threads, each a requests.Session authenticated as the test admin service, doing
GET /hub/api/users/{name} (a random user) and, one request in --list-every, GET /hub/api/users;
every request's latency is recorded. At the end /hub/metrics must show
gpuhub_device_telemetry_ok = 1 for every device of an "on" hub and for none of an "off" hub.

    python -m benchmarks.telemetry_overhead [--layout mig] [--variants off,off,1/memory,1/file,10/memory]
        [--rounds 30] [--duration 2] [--clients 8] [--json FILE]

No user servers run (no leases, so no usage heartbeats): what is measured is sampling and
exporting 64 devices. The hubs' id and container prefix are the benchmark's own and their orphan
removal is off, so they never touch another hub's containers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests

from harness.hub import Hub, ensure_network
from spawner import roles

GOAL = 1.05
MODEL = "NVIDIA H100 80GB HBM3"
SLICE = "1g.10gb"
STANDIN = Path(__file__).resolve().parents[1] / "tests" / "hardware" / "nvml_standin" / "pynvml.py"
HUB_ID = "gpuhub-bench-telemetry"
EXTRA_CONFIG = f"""
c.GPUDockerSpawner.hub_id = {HUB_ID!r}
c.DockerSpawner.prefix = "gpuhubbenchtel"
c.GPUDockerSpawner.orphan_grace = 0
c.JupyterHub.load_roles.append(
    {{"name": "bench-usage", "scopes": [{roles.READ_USAGE!r}], "services": ["test-admin"]}}
)
"""
# `import pynvml` in a hub: tests/hardware/nvml_standin's module, its layout then held in memory
# or re-read at every call as the stand-in does, with nvmlGpmMetricsGet counted (once per device per
# sample after the first); the count goes to a file once every `devices` calls.
WRAPPER = '''"""Written by benchmarks/telemetry_overhead.py for one benchmark run."""
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]
_spec = importlib.util.spec_from_file_location("gpuhub_nvml_standin", {standin!r})
_standin = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _standin
_spec.loader.exec_module(_standin)
_fake = _standin._fake_pynvml.make(_standin._layout()) if {mode!r} == "memory" else sys.modules["pynvml"]
_metrics_get = _fake.nvmlGpmMetricsGet
_calls = [0]


def _counted(request):
    _calls[0] += 1
    if _calls[0] % {devices} == 0:
        with open({count!r} + ".tmp", "w") as f:
            f.write(str(_calls[0]))
        os.replace({count!r} + ".tmp", {count!r})
    return _metrics_get(request)


_fake.nvmlGpmMetricsGet = _counted
sys.modules["pynvml"] = _fake
'''


# --- the devices -----------------------------------------------------------------------------------
def devices(layout: str, latency_ms: float) -> tuple[dict, list[dict]]:
    """(stand-in NVML layout, static inventory entries) of 64 devices with the same UUIDs."""
    gpus, inventory = [], []
    with_mig, whole = (0, 64) if layout == "whole" else (8, 8)
    for i in range(with_mig):
        parent = f"GPU-be0c0000-0000-0000-0000-{i:012d}"
        slices = [
            {
                "uuid": f"MIG-be0c0000-0000-0000-{i:04d}-{j:012d}",
                "name": f"{MODEL} MIG {SLICE}",
                "memory_mib": 9856,
                "slices": 1,
                "memory_used_mib": 12,
                "gpm": 3.0 * j,
                "gpu_instance_id": 9 + j,
            }
            for j in range(7)
        ]
        gpus.append({"uuid": parent, "name": MODEL, "memory_mib": 81559, "mig": slices, "gpm": 40.0})
        inventory += [
            {"uuid": s["uuid"], "model": MODEL, "memory_mib": 9856, "mig_profile": SLICE, "parent": parent}
            for s in slices
        ]
    for i in range(whole):
        uuid = f"GPU-be0c0001-0000-0000-0000-{i:012d}"
        gpus.append(
            {
                "uuid": uuid,
                "name": MODEL,
                "memory_mib": 81559,
                "mig": "disabled",
                "utilization": 37,
                "memory_used_mib": 1490,
                "gpm": 35.5,
            }
        )
        inventory.append({"uuid": uuid, "model": MODEL, "memory_mib": 81559})
    return {"latency_ms": latency_ms, "gpus": gpus}, inventory


def gpu_config(inventory: list[dict]) -> dict:
    return {
        "profiles": [
            {"slug": "cpu", "display_name": "CPU only", "default": True},
            {"slug": "mig", "display_name": "1 MIG slice", "gpu": {"count": 1, "mig_profile": SLICE}},
            {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}},
        ],
        "gpus": inventory,
        "quota": {"default": {"profiles": "*", "max_devices_per_user": 1}},
    }


def standins(layout: dict, tmp: str) -> dict[str, object]:
    """The stand-in's layout source as the hub gets it: re-read from a file at every call, or held in memory."""
    path = Path(tmp) / "nvml.json"
    path.write_text(json.dumps(layout))

    def from_file() -> dict:
        with open(path) as f:
            return json.load(f)

    return {"memory": layout, "file": from_file}


def sampler_cost(layout: dict, inventory: list[dict], samples: int = 20) -> dict[str, dict[str, float]]:
    """Wall and CPU ms of one Sampler.sample() of every device, in this process with nothing else running,
    against either stand-in."""
    from spawner import inventory as inv
    from spawner.telemetry import Sampler
    from tests.hardware import fake_pynvml

    listed = inv.from_static(inventory).devices
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, source in standins(layout, tmp).items():
            with Sampler(fake_pynvml.make(source)) as sampler:
                sampler.sample(listed)  # handles, GPM buffers and the first GPM sample
                wall, cpu = time.perf_counter(), time.thread_time()
                for _ in range(samples):
                    readings = sampler.sample(listed)
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            assert all(r.ok and r.activity is not None for r in readings.values()), "the sampler read no activity"
            out[mode] = {"wall_ms": 1000 * wall / samples, "cpu_ms": 1000 * cpu / samples}
    return out


def profile(layout: dict, inventory: list[dict], seconds: float = 8) -> None:
    """Where a sample's CPU time goes (cProfile), and how long a sample takes beside a CPU-bound thread: every
    NVML call releases the GIL and must win it back from that thread (Python hands it over after 5 ms)."""
    import cProfile
    import pstats

    from spawner import inventory as inv
    from spawner.telemetry import Sampler
    from tests.hardware import fake_pynvml

    listed = inv.from_static(inventory).devices
    with tempfile.TemporaryDirectory() as tmp:
        sources = standins(layout, tmp)
        for mode, source in sources.items():
            with Sampler(fake_pynvml.make(source)) as sampler:
                sampler.sample(listed)
                prof = cProfile.Profile(time.thread_time)
                prof.runcall(lambda: [sampler.sample(listed) for _ in range(5)])
            entries = sorted(pstats.Stats(prof).stats.items(), key=lambda kv: -kv[1][2])  # by own CPU time
            total = sum(v[2] for _, v in entries) / 5
            print(f"\ncProfile, stand-in layout {mode}: {1000 * total:.1f} ms CPU per sample of {len(listed)} devices")
            print(f"  {'own CPU ms/sample':>17} {'calls/sample':>12}  function")
            for (file, line, name), (_, calls, own, _, _) in entries[:8]:
                where = f"{Path(file).name}:{line} {name}" if line else name
                print(f"  {1000 * own / 5:>17.2f} {calls / 5:>12.0f}  {where}")

        def busy(duration: float) -> float:
            """Work units per second of a CPU-bound loop in this thread (it never releases the GIL by itself)."""
            doc = {"name": "tel001", "admin": False, "groups": ["students"], "servers": {}, "pending": None}
            done, end = 0, time.perf_counter() + duration
            while time.perf_counter() < end:
                json.dumps(doc)
                done += 1
            return done / duration

        walls: dict[str, list[float]] = {mode: [] for mode in sources}

        def beside(mode: str, duration: float) -> float:
            """busy() beside a sampler thread that samples every second, as Operations does (timing each)."""
            stop = threading.Event()
            sampler = Sampler(fake_pynvml.make(sources[mode]))
            sampler.sample(listed)  # handles and the first GPM sample: not timed

            def every_second():
                while not stop.is_set():
                    t0 = time.perf_counter()
                    sampler.sample(listed)
                    walls[mode].append(time.perf_counter() - t0)
                    stop.wait(1)

            thread = threading.Thread(target=every_second)
            thread.start()
            try:
                return busy(duration)
            finally:
                stop.set()
                thread.join()
                sampler.close()

        for mode in sources:
            beside(mode, seconds)
        alone = sampler_cost(layout, inventory)
        print(
            f"\nGIL: one sample of {len(listed)} devices, wall time, alone and in a thread beside a CPU-bound thread"
            f" (a saturated event loop that never waits for I/O), sampling every second for {seconds:g} s"
        )
        for mode in sources:
            print(
                f"  stand-in layout {mode:6}  alone {alone[mode]['wall_ms']:>5.0f} ms"
                f"   beside it {1000 * statistics.median(walls[mode]):>5.0f} ms (median of {len(walls[mode])})"
            )


# --- the hubs ------------------------------------------------------------------------------------------
@dataclass
class Variant:
    name: str
    interval: float  # GPUHUB_TELEMETRY_INTERVAL, 0 = off
    mode: str  # stand-in layout: "memory" or "file"
    hub: Hub
    count_file: Path
    devices: int
    clients: list[requests.Session] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)  # one per round

    def samples(self) -> int:
        """Samples this hub's telemetry has taken with GPM figures (every sample after the first)."""
        try:
            return int(self.count_file.read_text()) // self.devices
        except (OSError, ValueError):
            return 0


def parse_variants(text: str) -> list[tuple[str, float, str]]:
    """Variants from e.g. "off,off,1/memory,1/file": [(name, interval, stand-in mode)]. The first is the
    baseline and must be "off"; a second "off" is an A/A control (what the ratio does when nothing differs)."""
    out: list[tuple[str, float, str]] = []
    for item in (x.strip() for x in text.split(",")):
        if item == "off":
            out.append(("off" if not out else f"off (A/A {len(out)})", 0.0, "memory"))
            continue
        interval, _, mode = item.partition("/")
        mode = mode or "memory"
        if mode not in ("memory", "file") or float(interval) <= 0:
            raise ValueError(f"variant {item!r}: write off, INTERVAL/memory or INTERVAL/file")
        out.append((f"on {float(interval):g}s" + (" file" if mode == "file" else ""), float(interval), mode))
    if not out or out[0][0] != "off":
        raise ValueError("the first variant must be off (the baseline)")
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running(hub: Hub):
    """The hub process runs inside, and is paused (SIGSTOP) outside; its proxy and services run throughout."""
    os.kill(hub.proc.pid, signal.SIGCONT)
    try:
        yield hub
    finally:
        os.kill(hub.proc.pid, signal.SIGSTOP)


def start_gpu_service(hub: Hub, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = hub.api("GET", "/gpuhub/usage")
        if r.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"GET /hub/api/gpuhub/usage answered {r.status_code} {r.text}\n{hub.log_tail()}")
        time.sleep(0.5)


def telemetry_ok(hub: Hub) -> tuple[int, int]:
    """(devices whose gpuhub_device_telemetry_ok is 1, devices it is listed for) on /hub/metrics."""
    r = requests.get(f"{hub.url}/hub/metrics", headers={"Authorization": f"token {hub.token}"}, timeout=30)
    r.raise_for_status()
    lines = [line for line in r.text.splitlines() if line.startswith("gpuhub_device_telemetry_ok{")]
    return sum(1 for line in lines if float(line.rsplit(" ", 1)[1]) == 1), len(lines)


def sessions(hub: Hub, clients: int) -> list[requests.Session]:
    """One keep-alive session per client, kept for the whole run (no connection set-up in a measurement)."""
    out = []
    for _ in range(clients):
        s = requests.Session()
        s.headers["Authorization"] = f"token {hub.token}"
        out.append(s)
    return out


def load(hub: Hub, clients: list[requests.Session], users: list[str], duration: float, list_every: int, seed: int):
    """(endpoint, seconds, status) of every request the clients, one thread each, made in `duration` seconds."""
    done: list[list[tuple]] = [[] for _ in clients]
    go = threading.Barrier(len(clients) + 1)
    deadline = [0.0]
    base = f"{hub.url}/hub/api"

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        go.wait()
        while time.perf_counter() < deadline[0]:
            if rng.randrange(list_every) == 0:
                endpoint, url = "users", f"{base}/users"
            else:
                endpoint, url = "user", f"{base}/users/{rng.choice(users)}"
            t0 = time.perf_counter()
            r = clients[k].get(url, timeout=30)
            done[k].append((endpoint, time.perf_counter() - t0, r.status_code))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(len(clients))]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + duration
    go.wait()
    for t in threads:
        t.join()
    return [x for part in done for x in part]


def measure(variant: Variant, args, users: list[str], round_no: int) -> dict:
    pid = variant.hub.proc.pid
    with running(variant.hub):
        samples, before, t0 = variant.samples(), cpu_seconds(pid), time.monotonic()
        made = load(variant.hub, variant.clients, users, args.duration, args.list_every, seed=round_no)
        hub_cpu, wall = cpu_seconds(pid) - before, time.monotonic() - t0
        time.sleep(0.2)  # a sample under way writes its count
        samples = variant.samples() - samples
    failed = [x for x in made if x[2] != 200]
    if failed:
        raise RuntimeError(f"{variant.name}: {len(failed)} requests failed, e.g. {failed[:3]}")
    result = {
        "round": round_no + 1,
        "latencies": [x[1] for x in made],
        "by_endpoint": {e: [x[1] for x in made if x[0] == e] for e in ("user", "users")},
        "hub_cpu_s": hub_cpu,
        "wall_s": wall,
        "samples": samples,
    }
    variant.results.append(result)
    return result


# --- report ----------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stats(latencies: list[float]) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "p50_ms": 1000 * pct(latencies, 0.50),
        "p95_ms": 1000 * pct(latencies, 0.95),
        "p99_ms": 1000 * pct(latencies, 0.99),
        "mean_ms": 1000 * statistics.fmean(latencies),
    }


def p99(results: list[dict], endpoint: str | None = None) -> float:
    key = (lambda r: r["latencies"]) if endpoint is None else (lambda r: r["by_endpoint"][endpoint])
    return pct([x for r in results for x in key(r)], 0.99)


def spread(base: list[dict], other: list[dict], draws: int = 500) -> tuple[float, float]:
    """5th and 95th percentile of the all-rounds p99 ratio when the rounds are drawn again with replacement
    (a paired bootstrap over rounds: a round's two measurements stay together)."""
    rng = random.Random(1)
    ratios = []
    for _ in range(draws):
        picked = [rng.randrange(len(base)) for _ in base]
        ratios.append(p99([other[i] for i in picked]) / p99([base[i] for i in picked]))
    return pct(ratios, 0.05), pct(ratios, 0.95)


HEADER = (
    f"{'variant':13} {'requests':>8} {'req/s':>6} {'p50':>7} {'p95':>7} {'p99':>7}  {'hub CPU':>7} {'CPU/req':>8}"
    f" {'samples':>13}"
)


def row(variant: Variant) -> str:
    results = variant.results
    s = stats([x for r in results for x in r["latencies"]])
    wall = sum(r["wall_s"] for r in results)
    cpu = sum(r["hub_cpu_s"] for r in results)
    samples = sum(r["samples"] for r in results)
    return (
        f"{variant.name:13} {s['requests']:>8} {s['requests'] / wall:>6.0f} {s['p50_ms']:>5.1f}ms"
        f" {s['p95_ms']:>5.1f}ms {s['p99_ms']:>5.1f}ms  {100 * cpu / wall:>6.0f}% {1000 * cpu / s['requests']:>6.2f}ms"
        f" {f'{samples} ({samples / wall:.1f}/s)' if variant.interval else '-':>13}"
    )


def report(args, variants: list[Variant], alone: dict, n_devices: int, checks: dict) -> dict:
    off, others = variants[0], variants[1:]
    layout_words = (
        f"8 x {MODEL} with MIG, 7 x {SLICE} each (56 slices) + 8 without MIG"
        if args.layout == "mig"
        else f"64 x {MODEL} without MIG"
    )
    print(
        f"\nTelemetry overhead on the hub API: {n_devices} devices ({layout_words}), all with GPM;"
        f" stand-in pynvml, {args.latency_ms:g} ms per NVML call"
    )
    print(
        f"host: {subprocess.getoutput('nproc')} CPUs, Python {sys.version.split()[0]}; {args.clients} client threads"
        f" (keep-alive sessions), {args.users} users; 1 in {args.list_every} requests GET /hub/api/users, the others"
        " GET /hub/api/users/{name}"
    )
    print(
        f"{args.rounds} rounds of {args.duration:g} s of load per variant, order reversing every round, the other"
        f" hubs paused; {args.warmup:g} s of warm-up load per hub first"
    )
    print(
        f"sampler alone (this process, no load), one sample of {n_devices} devices:"
        f" stand-in layout in memory {alone['memory']['wall_ms']:.1f} ms ({alone['memory']['cpu_ms']:.1f} ms CPU),"
        f" re-read from its file at every call {alone['file']['wall_ms']:.1f} ms ({alone['file']['cpu_ms']:.1f} ms CPU)"
    )
    print(
        "\nAll rounds together. hub CPU: the hub process's CPU time during its recorded load, as a share of one"
        " CPU; CPU/req: that per request; samples: telemetry samples it took meanwhile (per second of load: a paused"
        " hub takes its due sample when it resumes, so the rate under load is at least the configured one)"
    )
    print(HEADER)
    for v in variants:
        print(row(v))

    print("\np99 of each round: off's in ms, the others' as a ratio to off's")
    print(f"{'round':>6} {'off':>9} " + " ".join(f"{v.name:>13}" for v in others))
    per_round = {v.name: [p99([v.results[n]]) / p99([off.results[n]]) for n in range(args.rounds)] for v in others}
    for n in range(args.rounds):
        print(
            f"{n + 1:>6} {1000 * p99([off.results[n]]):>7.1f}ms "
            + " ".join(f"{per_round[v.name][n]:>12.3f}x" for v in others)
        )
    print(f"{'median':>6} {'':>9} " + " ".join(f"{statistics.median(per_round[v.name]):>12.3f}x" for v in others))

    ratios = {v.name: p99(v.results) / p99(off.results) for v in others}
    spreads = {v.name: spread(off.results, v.results) for v in others}
    print("\np99(variant) / p99(off) over all rounds (every request of every round)")
    print(f"{'':>16} " + " ".join(f"{v.name:>13}" for v in others))
    print(f"{'all requests':>16} " + " ".join(f"{ratios[v.name]:>12.3f}x" for v in others))
    print(f"{'90% interval':>16} " + " ".join(f"{lo:>6.2f}-{hi:.2f}x" for lo, hi in spreads.values()))
    for endpoint, label in (("user", "GET /users/{name}"), ("users", "GET /users")):
        ratio = " ".join(f"{p99(v.results, endpoint) / p99(off.results, endpoint):>12.3f}x" for v in others)
        print(f"{label:>16} {ratio}")
    print("(90% interval: a paired bootstrap over rounds, 500 draws)")

    print("\ntelemetry check at the end, /hub/metrics gpuhub_device_telemetry_ok = 1:")
    for v in variants:
        ok, listed = checks[v.name]
        print(f"  {v.name:13} {ok} of {listed} devices listed (expected {n_devices if v.interval else 0})")
    print()
    for v in others:
        lo, hi = spreads[v.name]
        if v.interval == 0:
            print(
                f"A/A control {v.name:11} p99 ratio {ratios[v.name]:.3f}x (90% {lo:.2f}-{hi:.2f}x):"
                " both off, so this is the noise of the measurement"
            )
            continue
        met = "met" if ratios[v.name] <= GOAL else "MISSED"
        print(
            f"telemetry {v.name:13} p99 ratio {ratios[v.name]:.3f}x (90% {lo:.2f}-{hi:.2f}x) over all rounds"
            f" (goal <= {GOAL:.2f}x: {met})"
        )
    return {"ratio": ratios, "interval90": spreads, "per_round": per_round}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", choices=("mig", "whole"), default="mig", help="56 MIG slices + 8 GPUs, or 64 GPUs")
    parser.add_argument("--latency-ms", type=float, default=0.15, help="sleep of every stand-in NVML call")
    parser.add_argument(
        "--variants",
        default="off,off,1/memory,1/file,10/memory",
        help="off (first: the baseline; again: an A/A control), and on as INTERVAL/memory or INTERVAL/file",
    )
    parser.add_argument("--rounds", type=int, default=30, help="rounds; the variants' order reverses every round")
    parser.add_argument("--duration", type=float, default=2, help="seconds of recorded load per variant and round")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of unrecorded load per hub first")
    parser.add_argument("--clients", type=int, default=8, help="concurrent API clients (threads)")
    parser.add_argument("--users", type=int, default=100, help="users in each hub's database")
    parser.add_argument("--list-every", type=int, default=10, help="one request in N lists all users")
    parser.add_argument("--image", default="gpuhub/notebook:cpu", help="notebook image in the config (none runs)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--profile", action="store_true", help="only profile the sampler in this process (CPU and GIL), no hubs"
    )
    args = parser.parse_args()
    if args.profile:
        profile(*devices(args.layout, args.latency_ms))
        return 0
    try:
        specs = parse_variants(args.variants)
    except ValueError as e:
        parser.error(str(e))

    ensure_network(docker.from_env())
    nvml_layout, inventory = devices(args.layout, args.latency_ms)
    n_devices = len(inventory)
    print(f"sampler alone, in this process: one sample of {n_devices} devices ...", flush=True)
    alone = sampler_cost(nvml_layout, inventory)
    users = [f"tel{i:03d}" for i in range(args.users)]

    with tempfile.TemporaryDirectory(prefix="gpuhub-telemetry-") as tmp:
        config = Path(tmp) / "gpus.json"
        config.write_text(json.dumps(gpu_config(inventory)))
        layout_file = Path(tmp) / "nvml.json"
        layout_file.write_text(json.dumps(nvml_layout))
        variants: list[Variant] = []
        for name, interval, mode in specs:
            workdir = Path(tmp) / name.replace(" ", "-")
            (workdir / "nvml").mkdir(parents=True)
            count = workdir / "gpm-metrics-calls"
            (workdir / "nvml" / "pynvml.py").write_text(
                WRAPPER.format(standin=str(STANDIN), mode=mode, devices=n_devices, count=str(count))
            )
            env = {
                "GPUHUB_GPU_CONFIG": str(config),
                "GPUHUB_TELEMETRY_INTERVAL": f"{interval:g}",
                "PYTHONPATH": os.pathsep.join(p for p in (str(workdir / "nvml"), os.environ.get("PYTHONPATH")) if p),
                "GPUHUB_FAKE_NVML": str(layout_file),
            }
            hub = Hub(workdir, args.image, env=env, extra_config=EXTRA_CONFIG)
            variants.append(Variant(name, interval, mode, hub, count, n_devices))
        try:
            for v in variants:
                print(f"{v.name}: starting the hub, {args.users} users, its GPU service, warm-up ...", flush=True)
                v.hub.start()
                v.hub.api("POST", "/users", json={"usernames": users}).raise_for_status()
                start_gpu_service(v.hub)
                v.clients = sessions(v.hub, args.clients)
                load(v.hub, v.clients, users, args.warmup, args.list_every, seed=-1)
                os.kill(v.hub.proc.pid, signal.SIGSTOP)
            for n in range(args.rounds):
                order = variants if n % 2 == 0 else variants[::-1]
                for v in order:
                    measure(v, args, users, n)
                print(
                    f"round {n + 1}/{args.rounds}: "
                    + ", ".join(
                        f"{v.name} {len(v.results[n]['latencies'])} requests p99 {1000 * p99([v.results[n]]):.0f} ms"
                        for v in order
                    ),
                    flush=True,
                )
            checks = {}
            for v in variants:
                with running(v.hub):
                    checks[v.name] = telemetry_ok(v.hub)
        finally:
            for v in variants:
                if v.hub.proc is not None and v.hub.proc.poll() is None:
                    os.kill(v.hub.proc.pid, signal.SIGCONT)
                for session in v.clients:
                    session.close()
                v.hub.stop()

    summary = report(args, variants, alone, n_devices, checks)
    expected = {v.name: (n_devices, n_devices) if v.interval else (0, 0) for v in variants}
    bad = [name for name, seen in checks.items() if seen != expected[name]]
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "layout": args.layout,
                    "devices": n_devices,
                    "latency_ms": args.latency_ms,
                    "clients": args.clients,
                    "users": args.users,
                    "rounds": args.rounds,
                    "duration_s": args.duration,
                    "sampler_alone": alone,
                    "variants": {
                        v.name: {
                            "interval_s": v.interval,
                            "standin_layout": v.mode,
                            "all": stats([x for r in v.results for x in r["latencies"]]),
                            "rounds": [
                                {k: r[k] for k in ("round", "hub_cpu_s", "wall_s", "samples")} | stats(r["latencies"])
                                for r in v.results
                            ],
                            "telemetry_ok": checks[v.name],
                        }
                        for v in variants
                    },
                    "p99_ratios": summary,
                },
                indent=2,
            )
        )
    if bad:
        print(f"telemetry did not run as configured in: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
