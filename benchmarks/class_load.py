"""A whole class at once: N students sign in and start CPU servers within a minute, then run a cell.

Runs on the compose deployment users run (`make up`, with settings of its own: harness/compose.py)
and drives it with harness/loadclient.py, a load client in the manner of hubtraf: each student has
a cookie jar of their own and makes the requests a browser makes. Student i arrives at
i * WINDOW / N seconds (uniform arrivals over the first minute by default) and then, without pausing:

  signs in     GET /hub/login, POST the login form, land on the spawn form      -> sign-in time
  clicks Start POST the spawn form with the CPU profile                            (clock starts)
               follows the pending page's progress stream until ready,
               reloads it into JupyterLab (the server's OAuth hand-shake with the hub),
               POST /user/NAME/api/kernels, runs print(6*7) over the kernel's websocket
               and reads "42"                                                    -> time to a running kernel

Meanwhile a poller asks the hub's REST API (GET /hub/api/user with an admin token, through the
proxy, every --poll seconds) and times each answer: the hub API's latency during the burst (first
arrival to last cell output), against an idle baseline taken before it. When every student is
done, the servers are counted (the hub's view and Docker's) and every student stops their server
with the home page's Stop button. An error is anything a student would see go wrong: an HTTP
status >= 400, a timeout, a failed spawn, a wrong cell output; the goal is none. A sampler reads
the CPU counters of the hub's and the servers' cgroups and /proc/stat every second, to show where
the host's CPU went (and how much other work on the host took).

--hub-cpu-shares N is an experiment, not how users deploy: it gives the hub container CPU weight N
(`docker update --cpu-shares`) after `make up` instead of docker-compose.yml's, and the results
files get a name of their own.

    python -m benchmarks.class_load [--students 60] [--window 60] [--image gpuhub/notebook:cpu]

Writes docs/results/class-load-DATE.txt and .json (--results DIR; --results '' writes nothing).
Needs no other gpuhub deployment on this Docker engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import requests

from benchmarks.spawn_storm import summary
from harness.compose import ROOT, USER_PREFIX, Deployment, standin_gpus, unique_users
from harness.loadclient import StepError, Student, Timeouts
from spawner.container import LABEL_HUB, LABEL_USER

CELL = "print(6*7)"
EXPECTED = "42\n"
PROFILE = "cpu"
# What the class needs of the deployment besides harness/compose.py's test settings. A CPU server
# (Jupyter server + one idle kernel) uses about 150 MB, so 512M each lets 60 fit in 24 GiB with room.
SETTINGS_SHOWN = (
    "GPUHUB_MEM_LIMIT",
    "GPUHUB_CPU_LIMIT",
    "GPUHUB_SHM_SIZE",
    "GPUHUB_PIDS_LIMIT",
    "GPUHUB_CONCURRENT_SPAWN_LIMIT",
    "GPUHUB_START_TIMEOUT",
    "GPUHUB_GPU_WAIT_TIMEOUT",
    "GPUHUB_IDLE_TIMEOUT",
    "GPUHUB_TELEMETRY_INTERVAL",
    "GPUHUB_DB_URL",
)


@dataclass
class Record:
    """One student's session; times in seconds, `at` ones from the first arrival."""

    name: str
    arrival_at: float
    sign_in: float | None = None
    start_click_at: float | None = None
    ready: float | None = None  # Start click -> progress stream says ready
    lab: float | None = None  # ready -> JupyterLab loaded
    kernel: float | None = None  # lab -> kernel created
    cell: float | None = None  # kernel -> the cell's output read
    to_kernel: float | None = None  # Start click -> the cell's output: "time to a running kernel"
    done_at: float | None = None
    stop: float | None = None  # Stop button -> server gone (hub's view)
    error_step: str = ""
    error: str = ""
    stop_error: str = ""
    progress: list[str] = field(default_factory=list)  # the spawn's progress messages


# --- the hub API poller ------------------------------------------------------------------
class Poller(threading.Thread):
    """GET /hub/api/user with the admin token every `interval` s; (sent, seconds, status) per answer."""

    def __init__(self, url: str, token: str, interval: float):
        super().__init__(daemon=True, name="hub-api-poller")
        self.url = f"{url}/hub/api/user"
        self.headers = {"Authorization": f"token {token}"}
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []  # monotonic send time, latency, status (0: failed)
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        http = requests.Session()
        next_at = time.monotonic()
        while not self._halt.is_set():
            sent = time.monotonic()
            try:
                status = http.get(self.url, headers=self.headers, timeout=10).status_code
            except requests.RequestException as e:
                status = 0
                self.failures.append(f"{type(e).__name__}: {e}")
            self.samples.append((sent, time.monotonic() - sent, status))
            next_at = max(next_at + self.interval, time.monotonic())
            self._halt.wait(next_at - time.monotonic())

    def stop(self) -> None:
        self._halt.set()
        self.join(15)

    def between(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [s for s in self.samples if start <= s[0] <= end]


def percentiles_ms(latencies: list[float]) -> dict[str, float]:
    """p50 / p99 / max in ms (nearest rank, as spawn_storm.summary's p95)."""
    ordered = sorted(latencies)
    if not ordered:
        return {"n": 0}
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50": round(1000 * statistics.median(ordered), 1),
        "p99": round(1000 * p99, 1),
        "max": round(1000 * ordered[-1], 1),
    }


# --- where the CPU goes ----------------------------------------------------------------------
class CPUSampler(threading.Thread):
    """Every `interval` s: cores used by the hub container, by this run's user containers (their
    cgroups' CPU counters, when the engine runs on this host), by the host in all, and stolen by
    the hypervisor (/proc/stat). Samples: (monotonic time, hub, servers, host busy, steal) in cores."""

    def __init__(self, client, interval: float = 1.0):
        super().__init__(daemon=True, name="cpu-sampler")
        self.client = client
        self.interval = interval
        self.samples: list[tuple[float, float, float, float, float]] = []
        self.available = _cgroup_root() is not None
        self._halt = threading.Event()

    def run(self) -> None:
        if not self.available:
            return
        ids: dict[str, str] = {}  # container id -> "hub" / "server"
        last_list = 0.0
        before: dict[str, float] = {}
        host_before = host_cpu()
        t_before = time.monotonic()
        while not self._halt.wait(self.interval):
            if time.monotonic() - last_list > 3:
                last_list = time.monotonic()
                try:
                    for c in self.client.api.containers(filters={"label": f"{LABEL_HUB}=gpuhub"}):
                        if (c.get("Labels") or {}).get(LABEL_USER, "").startswith(USER_PREFIX):
                            ids.setdefault(c["Id"], "server")
                    ids.setdefault(self.client.api.inspect_container("gpuhub-hub")["Id"], "hub")
                except Exception:  # the engine is busy; keep the last list
                    pass
            now = time.monotonic()
            used = {"hub": 0.0, "server": 0.0}
            for cid, kind in ids.items():
                usage = cgroup_usage(cid)
                if usage is None:
                    continue
                if cid in before:
                    used[kind] += max(0.0, usage - before[cid])
                before[cid] = usage
            host_now = host_cpu()
            span = now - t_before
            busy = (host_now[0] - host_before[0]) / span
            steal = (host_now[1] - host_before[1]) / span
            self.samples.append((now, used["hub"] / span, used["server"] / span, busy, steal))
            host_before, t_before = host_now, now

    def stop(self) -> None:
        self._halt.set()
        self.join(15)

    def between(self, start: float, end: float) -> dict[str, float]:
        rows = [s for s in self.samples if start <= s[0] <= end]
        if not rows:
            return {}
        mean = lambda i: round(statistics.fmean(r[i] for r in rows), 2)  # noqa: E731
        return {
            "other_cores": round(statistics.fmean(r[3] - r[1] - r[2] for r in rows), 2),
            "hub_cores": mean(1),
            "hub_cores_min": round(min(r[1] for r in rows), 2),
            "servers_cores": mean(2),
            "host_busy_cores": mean(3),
            "steal_cores": mean(4),
        }


def _cgroup_root() -> Path | None:
    for root in (
        Path("/sys/fs/cgroup/cpuacct/docker"),
        Path("/sys/fs/cgroup/docker"),
        Path("/sys/fs/cgroup/system.slice"),
    ):
        if root.is_dir():
            return root
    return None


def cgroup_usage(cid: str) -> float | None:
    """CPU seconds a container has used, from its cgroup (v1 or v2, cgroupfs or systemd driver)."""
    candidates = (
        (Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage"), 1e-9),
        (Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat"), 1e-6),
        (Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"), 1e-6),
    )
    for path, scale in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.name == "cpu.stat":
            text = dict(line.split() for line in text.splitlines()).get("usage_usec", "0")
        return int(text) * scale
    return None


def host_cpu() -> tuple[float, float]:
    """Seconds the host's CPUs were busy (not idle or iowait) and stolen, since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


# --- one student -----------------------------------------------------------------------------
async def stop_all(deployment: Deployment, students: dict[str, Student], records: dict[str, Record]) -> None:
    """Every student whose server came up presses Stop; waits until the hub lists it no more."""

    async def one(name: str) -> None:
        rec, s = records[name], students[name]
        t = time.monotonic()
        try:
            await s.stop_server()
        except StepError as e:
            rec.stop_error = e.message
            return
        loop = asyncio.get_running_loop()
        while time.monotonic() < t + 180:
            model = await loop.run_in_executor(None, lambda: deployment.api("GET", f"/users/{name}").json())
            if "" not in (model.get("servers") or {}):
                rec.stop = time.monotonic() - t
                return
            await asyncio.sleep(0.5)
        rec.stop_error = "server not gone 180 s after Stop"

    await asyncio.gather(*(one(n) for n, r in records.items() if r.ready is not None and n in students))


async def run_class(deployment: Deployment, records: list[Record], timeouts: Timeouts, args) -> dict:
    password = deployment.setting("GPUHUB_SHARED_PASSWORD")
    by_name = {r.name: r for r in records}
    students: dict[str, Student] = {}
    await asyncio.sleep(args.baseline)  # the poller's idle baseline
    t0 = time.monotonic()

    async def keep_open(rec: Record) -> None:
        # One session per student for the whole run: the Stop button needs the sign-in's cookies.
        async with Student(deployment.url, rec.name, timeouts) as s:
            students[rec.name] = s
            await one_student(rec, s, deployment.url, password, t0)
            await finished.wait()

    finished = asyncio.Event()
    sessions = [asyncio.create_task(keep_open(r)) for r in records]
    # Wait for every student's flow (not the sessions, which stay open until the Stop buttons).
    while any(r.done_at is None for r in records):
        await asyncio.sleep(0.2)
        if all(t.done() for t in sessions):
            break
    t_end = time.monotonic()
    peak = await asyncio.get_running_loop().run_in_executor(None, count_servers, deployment)
    t_stop = time.monotonic()
    await stop_all(deployment, students, by_name)
    stopped = time.monotonic() - t_stop
    finished.set()
    await asyncio.gather(*sessions, return_exceptions=True)
    return {"t0": t0, "t_end": t_end, "peak": peak, "stop_wall": stopped}


async def one_student(rec: Record, s: Student, hub_url: str, password: str, t0: float) -> None:
    await asyncio.sleep(max(0.0, t0 + rec.arrival_at - time.monotonic()))
    try:
        t = time.monotonic()
        await s.sign_in(password)
        rec.sign_in = time.monotonic() - t
        clicked = time.monotonic()
        rec.start_click_at = clicked - t0
        await s.click_start(PROFILE)
        await s.wait_ready()
        t = time.monotonic()
        rec.ready = t - clicked
        await s.open_lab()
        rec.lab = time.monotonic() - t
        t = time.monotonic()
        await s.start_kernel()
        rec.kernel = time.monotonic() - t
        t = time.monotonic()
        result = await s.run_cell(CELL)
        if result.status != "ok" or result.stdout != EXPECTED:
            raise StepError("cell", f"{CELL} gave status {result.status!r}, output {result.stdout!r} {result.error}")
        now = time.monotonic()
        rec.cell = now - t
        rec.to_kernel = now - clicked
        rec.done_at = now - t0
    except StepError as e:
        rec.error_step, rec.error = e.step, e.message
        rec.done_at = time.monotonic() - t0
    except Exception as e:  # a bug of this client, still an error of the run
        rec.error_step, rec.error = "client", f"{type(e).__name__}: {e}"
        rec.done_at = time.monotonic() - t0
    finally:
        rec.progress = [e.get("message", "") for e in s.events]


# --- what the hub and Docker saw ---------------------------------------------------------------
def count_servers(deployment: Deployment) -> dict:
    """Servers of this run's students: ready in the hub's view, running in Docker's, and their memory."""
    users = deployment.api("GET", "/users", params={"limit": 1000}, timeout=30).json()
    ready = sum(
        1 for u in users if u["name"].startswith(USER_PREFIX) and (u.get("servers") or {}).get("", {}).get("ready")
    )
    containers = deployment.client.containers.list(filters={"label": f"{LABEL_HUB}=gpuhub"})
    ours = [c for c in containers if c.labels.get(LABEL_USER, "").startswith(USER_PREFIX)]
    memory = []
    if ours:
        out = subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", *[c.id for c in ours]],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        memory = [mib(line.split("/")[0]) for line in out.splitlines() if "/" in line]
    return {
        "hub_ready": ready,
        "docker_running": len(ours),
        "server_memory_mib": {"median": statistics.median(memory), "max": max(memory)} if memory else {},
        "host_memory_used_gib": round(host_memory_used() / 2**30, 1),
    }


def mib(text: str) -> float:
    number, unit = re.match(r"([\d.]+)\s*([KMG]i?B|B)", text.strip()).groups()
    return float(number) * {"B": 2**-20, "KiB": 2**-10, "MiB": 1, "GiB": 1024}.get(unit, 1)


def host_memory_used() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = lambda k: int(info[k].split()[0]) * 1024  # noqa: E731
    return kib("MemTotal") - kib("MemAvailable")


LOG_LINE = re.compile(
    r"^\[(\w) [\d-]+ [\d:.]+ \S+ \S+\] (\d{3}) (GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (\S+).*?([\d.]+)ms"
)


def hub_log_summary(log: str) -> dict:
    """The hub's request log over the run: answers by status, the >= 400 ones, warnings and errors."""
    statuses: Counter[str] = Counter()
    bad, api_ms = [], []
    for line in log.splitlines():
        m = LOG_LINE.match(line)
        if m:
            status = int(m.group(2))
            statuses[f"{status // 100}xx"] += 1
            if status >= 400:
                bad.append(line.strip())
            if m.group(4).split("?")[0] == "/hub/api/user" and status < 400:
                api_ms.append(float(m.group(5)) / 1000)
    problems = [line.strip() for line in log.splitlines() if re.match(r"^\[(E|C) ", line) or "Traceback" in line]
    warnings = Counter(
        re.sub(r"^\[W [^\]]*\] ", "", line.strip())[:100] for line in log.splitlines() if line.startswith("[W ")
    )
    return {
        "responses": dict(statuses),
        "status_400_plus": bad[:40],
        "errors": problems[:40],
        "warnings": dict(warnings.most_common(10)),
        "hub_side_api_user": percentiles_ms(api_ms),
    }


# --- report ------------------------------------------------------------------------------------
def seconds(values: list[float]) -> str:
    if not values:
        return "none"
    s = summary(values)
    return f"p50 {s['median']:.2f} s / p95 {s['p95']:.2f} s / max {s['max']:.2f} s"


def report(args, records: list[Record], marks: dict, poller: Poller, log: dict, wall: float):
    ok = [r for r in records if not r.error_step]
    errors = [r for r in records if r.error_step]
    t0, t_end = marks["t0"], marks["t_end"]
    baseline = percentiles_ms([s[1] for s in poller.between(t0 - args.baseline, t0) if s[2] == 200])
    burst_samples = poller.between(t0, t_end)
    burst = percentiles_ms([s[1] for s in burst_samples if s[2] == 200])
    poll_errors = [s for s in burst_samples if s[2] != 200]
    stop_errors = [r for r in records if r.stop_error]
    clicks = [r.start_click_at for r in records if r.start_click_at is not None]
    burst_wall = t_end - t0
    settings = marks["settings"]
    t = marks["timeouts"]
    phases = {k: [getattr(r, k) for r in ok] for k in ("sign_in", "ready", "lab", "kernel", "cell", "to_kernel")}
    sign_in_all = [r.sign_in for r in records if r.sign_in is not None]
    figures = {
        "sign_in_s": summary(sign_in_all) if sign_in_all else {},
        "to_running_kernel_s": summary(phases["to_kernel"]) if ok else {},
        "hub_api_burst_ms": burst,
        "hub_api_idle_ms": baseline,
        "errors": len(errors) + len(poll_errors) + len(stop_errors),
        "student_errors": len(errors),
        "hub_api_poll_errors": len(poll_errors),
        "stop_errors": len(stop_errors),
        "servers_at_peak": marks["peak"],
        "burst_wall_s": round(burst_wall, 1),
        "run_wall_s": round(wall, 1),
        "last_start_click_s": round(max(clicks), 2) if clicks else None,
        "stop_wall_s": round(marks["stop_wall"], 1),
        "cpu_burst_cores": marks.get("cpu") or {},
        "cpu_before_cores": marks.get("cpu_before") or {},
        "hub_cpu_shares": marks.get("hub_cpu_shares"),
    }
    cpus = os.cpu_count()
    mem = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    lines = [
        f"Class load, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {args.students} students, compose deployment "
        f"(make up), image {args.image}, {cpus} CPUs, {mem} GiB RAM, Docker "
        + subprocess.getoutput("docker version --format '{{.Server.Version}}'"),
        f"command: python -m benchmarks.class_load {' '.join(sys.argv[1:])}".rstrip(),
        f"arrivals: uniform, student i at i * {args.window:g} / {args.students} s (last at "
        f"{records[-1].arrival_at:.1f} s); Start clicks from {min(clicks, default=0):.1f} "
        f"to {max(clicks, default=0):.1f} s",
        f"each: sign in (login form) -> spawn form, profile '{PROFILE}' -> progress stream -> JupyterLab (OAuth) -> "
        f"POST api/kernels -> {CELL} over the kernel websocket, expecting {EXPECTED!r}",
        "settings: " + ", ".join(f"{k.removeprefix('GPUHUB_')}={v or '(empty)'}" for k, v in settings.items()),
        f"hub API poller: GET /hub/api/user (admin token, through the proxy) every {args.poll:g} s; no answer "
        "within 10 s is an error",
        f"client timeouts (each one an error): a page or hub API request {t['request']:g} s, the lab page with its "
        f"OAuth hand-shake and a new kernel {t['lab']:g} s, the cell {t['cell']:g} s, the progress stream until ready "
        f"{t['ready']:g} s (as long as the hub lets a spawn take)",
        "",
        f"students finished: {len(ok)} of {len(records)}; errors: {figures['errors']} "
        f"({len(errors)} students, {len(poll_errors)} hub API polls, {len(stop_errors)} stops)",
        f"sign-in (login page + form + landing page):  {seconds(sign_in_all)}",
        f"time to a running kernel (Start -> output):  {seconds(phases['to_kernel'])}",
        f"  of which: ready  {seconds(phases['ready'])}",
        f"            lab    {seconds(phases['lab'])}",
        f"            kernel {seconds(phases['kernel'])}",
        f"            cell   {seconds(phases['cell'])}",
        f"hub API during the burst ({burst.get('n', 0)} polls): p50 {burst.get('p50')} ms / p99 {burst.get('p99')} ms"
        f" / max {burst.get('max')} ms   (idle before it, {baseline.get('n', 0)} polls: p50 {baseline.get('p50')} ms"
        f" / p99 {baseline.get('p99')} ms)",
        f"  hub's own log for GET /hub/api/user during the run: {log['hub_side_api_user']}",
        f"servers at the peak (all done, before Stop): {marks['peak']['hub_ready']} ready in the hub, "
        f"{marks['peak']['docker_running']} containers running; per server memory {marks['peak']['server_memory_mib']} "
        f"MiB; host memory in use {marks['peak']['host_memory_used_gib']} GiB",
        f"burst wall time (first arrival -> last cell output): {burst_wall:.1f} s; everyone stopped (Stop button -> "
        f"gone) in {marks['stop_wall']:.1f} s; whole run incl. make up/down {wall:.0f} s",
        f"hub's answers during the run: {log['responses']}",
    ]
    cpu = marks.get("cpu") or {}
    if cpu:
        lines.insert(
            -1,
            f"CPU during the burst, mean cores of {cpus}: hub container {cpu['hub_cores']} (lowest 1 s: "
            f"{cpu['hub_cores_min']}), user servers {cpu['servers_cores']}, host busy {cpu['host_busy_cores']}, "
            f"stolen by the hypervisor {cpu['steal_cores']}; other work on the host (neither the hub nor "
            f"this class's servers) {cpu['other_cores']}, {marks['cpu_before'].get('other_cores')} in the idle "
            "baseline before it",
        )
    how = "--hub-cpu-shares, an experiment" if args.hub_cpu_shares else "docker-compose.yml's cpu_shares"
    lines.insert(5, f"hub container CPU weight {marks.get('hub_cpu_shares')} ({how}); user servers 1024 each")
    if errors:
        lines += ["", "student errors by step: " + str(Counter(r.error_step for r in errors))]
        lines += [f"  {r.name}: {r.error_step}: {r.error[:300]}" for r in errors[:20]]
    if stop_errors:
        lines += [f"stop errors: {r.name}: {r.stop_error[:300]}" for r in stop_errors[:10]]
    if poll_errors:
        lines += [f"hub API poll failures: {Counter(s[2] for s in poll_errors)} {poller.failures[:5]}"]
    if log["status_400_plus"]:
        lines += ["", "hub log, answers >= 400:"] + [f"  {x[:300]}" for x in log["status_400_plus"][:20]]
    if log["errors"]:
        lines += ["", "hub log, errors:"] + [f"  {x[:300]}" for x in log["errors"][:20]]
    if log["warnings"]:
        lines += ["", "hub log, warnings (most common):"] + [f"  {n} x {w}" for w, n in log["warnings"].items()]
    data = {
        "students": args.students,
        "window_s": args.window,
        "arrivals": "uniform",
        "image": args.image,
        "cpus": cpus,
        "settings": settings,
        "client_timeouts_s": t,
        "figures": figures,
        "phases_s": {k: summary(v) for k, v in phases.items() if v},
        "hub_log": log,
        "records": [asdict(r) for r in records],
        "cpu_series": {
            "columns": ["s from first arrival", "hub cores", "servers cores", "host busy cores", "steal cores"],
            "rows": marks.get("cpu_series") or [],
        },
        "hub_api_polls": [[round(s[0] - t0, 3), round(s[1] * 1000, 2), s[2]] for s in poller.samples],
    }
    return "\n".join(lines), data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=60)
    parser.add_argument("--window", type=float, default=60, help="arrivals spread uniformly over this many seconds")
    parser.add_argument("--image", default=os.environ.get("GPUHUB_TEST_IMAGE", "gpuhub/notebook:cpu"))
    parser.add_argument("--mem-limit", default="512M", help="GPUHUB_MEM_LIMIT of every server")
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between hub API polls")
    parser.add_argument("--baseline", type=float, default=10, help="seconds of idle hub API polls before the class")
    parser.add_argument("--results", default=str(ROOT / "docs/results"), help="folder for the .txt/.json ('' none)")
    parser.add_argument("--hub-log", help="also save the hub's log of the run to this file")
    parser.add_argument(
        "--hub-cpu-shares",
        type=int,
        help="experiment: `docker update --cpu-shares N gpuhub-hub` after make up (docker-compose.yml sets 65536)",
    )
    args = parser.parse_args()

    started = time.monotonic()
    names = unique_users(args.students, "cl")
    span = args.window / args.students
    records = [Record(name, arrival_at=i * span) for i, name in enumerate(names)]
    timeouts = Timeouts()
    with tempfile.TemporaryDirectory() as tmp:
        deployment = Deployment(Path(tmp), args.image, standin_gpus(2), {"GPUHUB_MEM_LIMIT": args.mem_limit})
        poller = sampler = None
        try:
            print(f"make up (settings in {deployment.env_file}) ...", flush=True)
            deployment.up()
            print(f"  up in {time.monotonic() - started:.0f} s at {deployment.url}", flush=True)
            settings = {k: deployment.setting(k) for k in SETTINGS_SHOWN}
            # A browser's pending page waits as long as the hub lets a spawn take (jupyterhub_config.py).
            timeouts.ready = float(deployment.setting("GPUHUB_START_TIMEOUT")) + float(
                deployment.setting("GPUHUB_GPU_WAIT_TIMEOUT")
            )
            if args.hub_cpu_shares:
                deployment.client.api.update_container("gpuhub-hub", cpu_shares=args.hub_cpu_shares)
            hub_cpu_shares = deployment.client.api.inspect_container("gpuhub-hub")["HostConfig"]["CpuShares"]
            since = time.time()
            poller = Poller(deployment.url, deployment.token, args.poll)
            poller.start()
            sampler = CPUSampler(deployment.client)
            sampler.start()
            print(f"{args.students} students arriving over {args.window:g} s ...", flush=True)
            marks = asyncio.run(run_class(deployment, records, timeouts, args))
            marks["hub_cpu_shares"] = hub_cpu_shares
            marks["settings"] = settings
            marks["timeouts"] = asdict(timeouts)
            poller.stop()
            sampler.stop()
            marks["cpu"] = sampler.between(marks["t0"], marks["t_end"])
            marks["cpu_before"] = sampler.between(marks["t0"] - args.baseline, marks["t0"])
            marks["cpu_series"] = [
                [round(x[0] - marks["t0"], 1), *(round(v, 2) for v in x[1:])] for x in sampler.samples
            ]
            hub_log = deployment.hub_log(since=since)
            if args.hub_log:
                Path(args.hub_log).write_text(hub_log)
            log = hub_log_summary(hub_log)
        finally:
            for thread in (poller, sampler):
                if thread:
                    thread.stop()
            print("make down ...", flush=True)
            deployment.down()
    text, data = report(args, records, marks, poller, log, time.monotonic() - started)
    print("\n" + text)
    if args.results:
        out = Path(args.results)
        out.mkdir(parents=True, exist_ok=True)
        experiment = f"-hub-cpu-shares-{args.hub_cpu_shares}" if args.hub_cpu_shares else ""
        stem = out / f"class-load-{date.today():%Y-%m-%d}{experiment}"
        stem.with_suffix(".txt").write_text(text + "\n")
        stem.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
        print(f"\nwritten: {stem}.txt, {stem}.json")
    return 0 if not data["figures"]["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
