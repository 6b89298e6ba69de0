"""A class day replayed through gpuhub's admission, ledger and culling code on simulated time.

No Docker, no hub: a trace of student sessions (docs/class-day.md has the format) is played on a
simulated clock. Each start goes through `admission.admit()` and `Ledger.request()` (as
`GPUService.reserve()` runs them), waiters get devices when a lease ends (as `GPUService._wake()`
hands them out) or give up after `gpu_wait_timeout`, and at every 10 s telemetry sample each running
server goes through `culling.observe()` and `culling.evaluate()`, the policy the hub runs. The hub-wide
jupyterhub-idle-culler is modelled as it runs: every `timeout / 2` it stops servers whose
`last_activity` is older than `timeout`.

The same trace is played under two policies:
  gpuhub    the GPU profile has gpu_idle_timeout (default 15 min, threshold 5 %, warning 5 min),
            plus the hub-wide activity culler at 1 h
  baseline  the hub-wide activity culler at 1 h only; an open browser tab counts as activity
Goals (the issue): at demand <= 1.5x supply, allocated-but-idle device time <= 10 % of allocated
time and median queue wait <= 2 min.

    python -m benchmarks.class_day [--trace FILE] [--devices 14] [--gpu-idle-timeout 15m]
                                   [--warning 5m] [--json]
    python -m benchmarks.class_day --generate out.jsonl [--seed 1]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
import re
import statistics
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spawner import admission, budget, culling, profiles
from spawner.admission import Refusal, Usage
from spawner.allocator import Lease, Ledger
from spawner.devices import Device

DEFAULT_TRACE = Path(__file__).parent / "traces" / "class-day-120x14.jsonl"
SAMPLE_S = 10.0  # the hub's telemetry interval: the policy is evaluated at every sample
MODEL = "NVIDIA H100 80GB HBM3"
PROFILE = "gpu"
QUOTA_DEFAULT = {"max_devices_per_user": 1}
IDLE_KINDS = ("before the first job", "between jobs", "after the last job", "job below the threshold")

# --- the trace ------------------------------------------------------------------------------------------


class TraceError(ValueError):
    """A trace line is malformed; one line naming the file, the line and the problem."""


@dataclass(frozen=True)
class Job:
    start: float  # seconds since midnight
    duration: float  # seconds
    activity: float = 100.0  # GPU activity (percent) while it runs

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Session:
    """One student session: from opening a GPU notebook to leaving."""

    student: str
    arrive: float
    jobs: tuple[Job, ...] = ()
    stop: float | None = None  # the student stops the server; None: they never do
    tab_closed: float | None = None  # None: the tab stays open
    profile: str = PROFILE
    line: int = 0
    source: str = ""

    @property
    def intent_end(self) -> float:
        """The last time this session names."""
        return max([self.arrive, self.stop or 0, self.tab_closed or 0, *(j.end for j in self.jobs)])

    @property
    def need_end(self) -> float:
        """Until when the student needs a GPU: the end of their last job."""
        return max([self.arrive, *(j.end for j in self.jobs)])


_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_KEYS = {"student", "arrive", "profile", "jobs", "stop", "tab"}


def parse_time(value: object, what: str) -> float:
    m = _TIME.match(value) if isinstance(value, str) else None
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59 or int(m.group(3) or 0) > 59:
        raise ValueError(f"{what} must be a time HH:MM:SS, got {value!r}")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3) or 0)


def clock(t: float) -> str:
    t = int(round(t))
    return f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"


def parse_line(text: str, line: int = 0, source: str = "") -> Session:
    """One trace line -> Session; ValueError (without the line number) on any problem."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"must be a JSON object, got {type(data).__name__}")
    unknown = set(data) - _KEYS
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))} (known: {', '.join(sorted(_KEYS))})")
    student = data.get("student")
    if not isinstance(student, str) or not student or "/" in student:
        raise ValueError(f"student must be a user name without '/', got {student!r}")
    if "arrive" not in data:
        raise ValueError("arrive is missing")
    arrive = parse_time(data["arrive"], "arrive")
    profile = data.get("profile", PROFILE)
    if not isinstance(profile, str) or not profile:
        raise ValueError(f"profile must be a profile slug, got {profile!r}")
    jobs = _jobs(data.get("jobs", []), arrive)
    stop = data.get("stop")
    if stop is not None:
        stop = parse_time(stop, "stop")
        if stop < arrive:
            raise ValueError(f"stop {clock(stop)} is before arrive {clock(arrive)}")
        late = [j for j in jobs if j.end > stop]
        if late:
            raise ValueError(
                f"the job at {clock(late[0].start)} ends at {clock(late[0].end)}, after stop {clock(stop)}"
            )
    tab = data.get("tab", "open")
    closed = None
    if tab != "open":
        if not isinstance(tab, str) or not tab.startswith("closed at "):
            raise ValueError(f"tab must be 'open' or 'closed at HH:MM:SS', got {tab!r}")
        closed = parse_time(tab[len("closed at ") :], "the tab's closing time")
        if closed < arrive:
            raise ValueError(f"the tab is closed at {clock(closed)}, before arrive {clock(arrive)}")
        late = [j for j in jobs if j.start > closed]
        if late:
            raise ValueError(f"the job at {clock(late[0].start)} starts after the tab is closed at {clock(closed)}")
    return Session(student, arrive, jobs, stop, closed, profile, line, source)


def _jobs(value: object, arrive: float) -> tuple[Job, ...]:
    if not isinstance(value, list):
        raise ValueError(f"jobs must be a list of [start, seconds] or [start, seconds, activity], got {value!r}")
    jobs: list[Job] = []
    for i, item in enumerate(value):
        what = f"job #{i + 1}"
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise ValueError(f"{what} must be [start, seconds] or [start, seconds, activity], got {item!r}")
        start = parse_time(item[0], f"{what} start")
        seconds = item[1]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ValueError(f"{what}: seconds must be a number > 0, got {seconds!r}")
        activity = item[2] if len(item) == 3 else 100.0
        if isinstance(activity, bool) or not isinstance(activity, (int, float)) or not 0 <= activity <= 100:
            raise ValueError(f"{what}: activity must be a percentage from 0 to 100, got {activity!r}")
        if start < arrive:
            raise ValueError(f"{what} starts at {clock(start)}, before arrive {clock(arrive)}")
        if jobs and start < jobs[-1].end:
            raise ValueError(f"{what} starts at {clock(start)}, before job #{i} ends at {clock(jobs[-1].end)}")
        jobs.append(Job(start, float(seconds), float(activity)))
    return tuple(jobs)


def load(path: str | Path) -> list[Session]:
    """Read a trace file; TraceError names the file and line of the first problem."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise TraceError(f"{path}: cannot read the trace ({e.strerror})") from None
    return parse(text.splitlines(), str(path))


def parse(lines: Iterable[str], source: str = "trace") -> list[Session]:
    """Trace lines -> sessions sorted by arrival. Blank lines and lines starting with '#' are skipped."""
    sessions: list[Session] = []
    for n, text in enumerate(lines, 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            sessions.append(parse_line(text, n, source))
        except ValueError as e:
            raise TraceError(f"{source}:{n}: {e}") from None
    if not sessions:
        raise TraceError(f"{source}: the trace has no sessions")
    previous: dict[str, Session] = {}
    for s in sorted(sessions, key=lambda s: (s.arrive, s.line)):
        before = previous.get(s.student)
        if before is not None and s.arrive < before.intent_end:
            raise TraceError(
                f"{source}:{s.line}: {s.student} arrives at {clock(s.arrive)} while their session of line"
                f" {before.line} lasts until {clock(before.intent_end)}"
            )
        previous[s.student] = s
    return sorted(sessions, key=lambda s: (s.arrive, s.line))


def dump(sessions: Iterable[Session]) -> str:
    lines = []
    for s in sessions:
        row: dict[str, object] = {"student": s.student, "arrive": clock(s.arrive), "profile": s.profile}
        row["jobs"] = [
            [clock(j.start), round(j.duration)] + ([j.activity] if j.activity != 100 else []) for j in s.jobs
        ]
        row["stop"] = clock(s.stop) if s.stop is not None else None
        row["tab"] = "open" if s.tab_closed is None else f"closed at {clock(s.tab_closed)}"
        lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"


def peak_demand(sessions: Sequence[Session]) -> tuple[int, float]:
    """(most students at once between arriving and the end of their last job, when)."""
    edges = sorted([(s.arrive, 1) for s in sessions] + [(s.need_end, -1) for s in sessions], key=lambda e: (e[0], e[1]))
    now = peak = 0
    at = 0.0
    for t, step in edges:
        now += step
        if now > peak:
            peak, at = now, t
    return peak, at


# --- a generated class day ------------------------------------------------------------------------------


def generate(seed: int = 1, students: int = 120, lectures: int = 6, first: float = 9 * 3600) -> list[Session]:
    """A class day: `lectures` lectures 90 min apart (75 min long), the students split among them.

    Each lecture: arrivals in a burst over its first minutes (a few early, a few late), a first
    exercise, the instructor talking for 8-15 min, a second exercise. 65 % of the students run only
    interactive cells (seconds to minutes, 1-5 min of thinking between them), 35 % also train for
    20-60 min (ending by 85 min after the lecture starts, before the next lecture). At the end 25 %
    stop their server, 25 % close the tab without stopping, 50 % walk away with the tab open.
    """
    rng = random.Random(seed)
    sessions: list[Session] = []
    number = itertools.count(1)
    for k in range(lectures):
        start = first + k * 90 * 60
        talk_start = start + rng.uniform(25, 35) * 60
        talk_end = talk_start + rng.uniform(8, 15) * 60
        size = students // lectures + (k < students % lectures)
        for _ in range(size):
            sessions.append(_session(rng, f"s{next(number):03d}", start, talk_start, talk_end))
    return sorted(sessions, key=lambda s: s.arrive)


def _session(rng: random.Random, student: str, lecture: float, talk_start: float, talk_end: float) -> Session:
    r = rng.random()
    if r < 0.1:
        arrive = lecture - rng.uniform(0, 120)  # early
    elif r < 0.9:
        arrive = lecture + min(rng.expovariate(1 / 90), 600)  # the burst
    else:
        arrive = lecture + rng.uniform(300, 900)  # late
    arrive = round(arrive)
    leave = lecture + 75 * 60 + rng.uniform(-10, 3) * 60
    cells: list[Job] = []
    cursor = arrive + rng.uniform(60, 240)  # open the notebook, read the exercise
    for begin, end in ((cursor, talk_start), (talk_end + rng.uniform(30, 180), leave)):
        cursor = max(cursor, begin)
        while True:
            if rng.random() < 0.1:
                seconds = rng.uniform(120, 480)  # a small training loop
            else:
                seconds = min(rng.lognormvariate(math.log(15), 1.2), 600)
            seconds = max(1, round(seconds))
            if cursor + seconds > end:
                break
            cells.append(Job(round(cursor), seconds))
            cursor = round(cursor) + seconds + rng.uniform(60, 300)
    jobs = cells
    if rng.random() < 0.35 and cells:
        latest_end = lecture + 85 * 60
        candidates = [c for c in cells if arrive + 300 <= c.start <= latest_end - 20 * 60]
        if candidates:
            begin = rng.choice(candidates).start
            seconds = round(rng.uniform(20 * 60, min(60 * 60, latest_end - begin)))
            training = Job(begin, seconds)
            resume = training.end + rng.uniform(60, 300)
            jobs = [c for c in cells if c.start < begin] + [training] + [c for c in cells if c.start >= resume]
    last = max([arrive, *(j.end for j in jobs)])
    leave = max(leave, max([arrive, *(j.start for j in jobs)]) + 30)
    e = rng.random()
    stop = closed = None
    if e < 0.25:
        stop = closed = round(max(leave, last) + rng.uniform(30, 180))
    elif e < 0.5:
        closed = round(leave)
    return Session(student, arrive, tuple(jobs), stop, closed)


# --- policies -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    name: str
    limits: dict  # the GPU profile's limit keys, as in profile_list
    warning: float = 300.0  # seconds of notice before a stop
    hub_idle_timeout: float = 3600.0  # jupyterhub-idle-culler --timeout (0: off)
    cull_every: float | None = None  # jupyterhub-idle-culler --cull-every (None: its default, timeout // 2)

    def profile_list(self) -> list[dict]:
        entry = {"slug": PROFILE, "display_name": "1 GPU", "gpu": {"count": 1}, "default": True}
        return [{**entry, **self.limits}]


def policies(
    gpu_idle_timeout: float = 900, threshold: float = 5.0, warning: float = 300, hub_idle_timeout: float = 3600
) -> list[Policy]:
    gpuhub = {"gpu_idle_timeout": gpu_idle_timeout, "gpu_idle_threshold": threshold}
    return [Policy("gpuhub", gpuhub, warning, hub_idle_timeout), Policy("baseline", {}, warning, hub_idle_timeout)]


def inventory(n: int) -> list[Device]:
    return [Device(f"GPU-{i:08x}-0000-4000-8000-000000c1a55d", MODEL, 81559, index=i) for i in range(n)]


# --- the simulation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    student: str
    why: str  # "arrival", "re-arrival after a cull", "retry after a refusal"
    asked: float
    granted: float

    @property
    def seconds(self) -> float:
        return self.granted - self.asked


@dataclass
class Result:
    policy: Policy
    devices: int
    start: float
    until: float
    threshold: float
    held: Counter = field(default_factory=Counter)  # "busy" or an IDLE_KINDS entry -> device-seconds
    waits: list[Wait] = field(default_factory=list)  # every start that got devices
    asks: list[tuple[str, float, str]] = field(default_factory=list)  # every start: (why, s in queue, outcome)
    refusals: Counter = field(default_factory=Counter)  # message -> count
    left_queue: Counter = field(default_factory=Counter)  # why a waiter left before a grant -> count
    ends: Counter = field(default_factory=Counter)  # why a server ended -> count
    stops: list[tuple[float, str, str]] = field(default_factory=list)  # (time, student, why) of each end
    culled_with_work_left: int = 0  # culls of students who still had jobs to run
    warnings: int = 0
    warnings_cleared: int = 0
    jobs_run: int = 0
    jobs_not_run: int = 0
    not_run_s: float = 0.0
    cut_s: float = 0.0  # job time lost to stops and the end of the day
    still_waiting: int = 0
    peak_claims: int = 0  # most leases + waiters at a sample
    peak_claims_at: float = 0.0
    log: list[tuple[float, str, str]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def allocated(self) -> float:
        return sum(self.held.values())

    @property
    def idle(self) -> float:
        return sum(v for k, v in self.held.items() if k != "busy")

    def ended(self, student: str) -> list[tuple[float, str]]:
        """(time, reason) of each end of this student's servers."""
        return [(t, why) for t, who, why in self.stops if who == student]

    def waited(self, student: str) -> list[Wait]:
        return [w for w in self.waits if w.student == student]


_ARRIVE, _STOP, _TAB, _JOB_END, _DUE, _TIMEOUT, _SAMPLE, _CULL = range(8)
_ORDER = {_JOB_END: 0, _STOP: 1, _TAB: 2, _ARRIVE: 3, _DUE: 4, _TIMEOUT: 5, _SAMPLE: 6, _CULL: 7}
HUB_CULL = "hub-idle"  # the end reason of the hub-wide jupyterhub-idle-culler
USER_STOP = "user"
END_OF_DAY = "still running at the end of the day"


class _Student:
    def __init__(self, name: str):
        self.name = name
        self.owner = f"{name}/"
        self.epoch = 0  # bumped at each arrival and stop: events of an earlier epoch are stale
        self.state = "none"  # "none", "waiting" or "running"
        self.due: deque[Job] = deque()  # jobs whose start has come, not run yet
        self.remaining = 0  # jobs of the session not started yet (due or not)
        self.ran_any = False
        self.job: Job | None = None
        self.job_started = 0.0
        self.job_token = 0
        self.last_job_end = -math.inf
        self.tab_open = False
        self.tab_closed_at = -math.inf
        self.asked_at = 0.0
        self.why = ""
        self.wait_token = 0
        self.lease: Lease | None = None
        self.container = ""
        self.granted_at = 0.0
        self.watch: culling.Watch | None = None
        self.mark_at = 0.0
        self.mark_kind = ""
        self.culled = False
        self.starts = 0


class Day:
    """One policy over one trace."""

    def __init__(
        self,
        sessions: Sequence[Session],
        policy: Policy,
        devices: int = 14,
        wait_timeout: float = 600.0,
        until: float | None = None,
        threshold: float = 5.0,
    ):
        self.sessions = sorted(sessions, key=lambda s: (s.arrive, s.line))
        self.policy = policy
        self.profiles = profiles.parse(policy.profile_list(), hub_idle_timeout=policy.hub_idle_timeout)
        slugs = {p.slug for p in self.profiles}
        for s in self.sessions:
            if s.profile not in slugs:
                raise TraceError(f"{s.source or 'trace'}:{s.line}: unknown profile {s.profile!r} (known: {PROFILE})")
        self.limits = self.profiles[0].limits
        self.ledger = Ledger(inventory(devices))
        self.wait_timeout = wait_timeout
        self.start = math.floor(self.sessions[0].arrive / SAMPLE_S) * SAMPLE_S
        self.until = until if until is not None else max(s.intent_end for s in self.sessions)
        self.result = Result(policy, devices, self.start, self.until, threshold)
        self.students: dict[str, _Student] = {}
        self.holding: dict[str, _Student] = {}  # owner -> student with a lease, in grant order
        self._events: list = []
        self._seq = itertools.count()

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> Result:
        started = time.perf_counter()
        for s in self.sessions:
            st = self.students.setdefault(s.student, _Student(s.student))
            self._push(s.arrive, _ARRIVE, st, s)
        self._push(self.start, _SAMPLE)
        cull_every = self.policy.cull_every or self.policy.hub_idle_timeout // 2
        if self.policy.hub_idle_timeout and cull_every > 0:
            self._cull_every = cull_every
            self._push(math.ceil(self.start / cull_every) * cull_every, _CULL)
        handlers = {
            _ARRIVE: self._arrive,
            _STOP: self._stop,
            _TAB: self._tab,
            _JOB_END: self._job_end,
            _DUE: self._due,
            _TIMEOUT: self._timeout,
            _SAMPLE: self._sample,
            _CULL: self._cull,
        }
        while self._events:
            now, _, _, kind, args = heapq.heappop(self._events)
            if now > self.until:
                break
            handlers[kind](now, *args)
        self._finish()
        self.result.wall_s = time.perf_counter() - started
        return self.result

    def _push(self, at: float, kind: int, *args) -> None:
        heapq.heappush(self._events, (at, _ORDER[kind], next(self._seq), kind, args))

    def _log(self, now: float, st: _Student, what: str) -> None:
        self.result.log.append((now, st.name, what))

    # --- the student's side ---------------------------------------------------------------------
    def _arrive(self, now: float, st: _Student, s: Session) -> None:
        st.epoch += 1
        st.tab_open = True
        st.remaining += len(s.jobs)
        st.ran_any = False
        for job in s.jobs:
            self._push(job.start, _DUE, st, st.epoch, job)
        if s.stop is not None:
            self._push(s.stop, _STOP, st, st.epoch)
        if s.tab_closed is not None:
            self._push(s.tab_closed, _TAB, st, st.epoch)
        self._log(now, st, f"arrives ({len(s.jobs)} jobs)")
        if st.state == "running":
            self._log(now, st, "resumes the server still running from before")
            self._mark(st, now)
        elif st.state == "none":
            self._ask(st, now, "arrival")

    def _due(self, now: float, st: _Student, epoch: int, job: Job) -> None:
        if epoch != st.epoch:
            return
        st.due.append(job)
        if st.state == "running":
            self._run_due(st, now)
        elif st.state == "none":
            self._ask(st, now, "re-arrival after a cull" if st.culled else "retry after a refusal")

    def _job_end(self, now: float, st: _Student, token: int) -> None:
        if token != st.job_token or st.job is None:
            return
        st.job = None
        st.last_job_end = now
        self._mark(st, now)
        self._run_due(st, now)

    def _stop(self, now: float, st: _Student, epoch: int) -> None:
        if epoch != st.epoch:
            return
        st.epoch += 1  # the session is over: its later events are void
        st.tab_open = False  # and the student has left
        st.tab_closed_at = now
        self._drop_due(st)
        st.remaining = 0
        if st.state == "running":
            self._end(st, now, USER_STOP)
        elif st.state == "waiting":
            self._leave_queue(st, now, "stopped while waiting")

    def _tab(self, now: float, st: _Student, epoch: int) -> None:
        if epoch != st.epoch:
            return
        st.tab_open = False
        st.tab_closed_at = now
        self._log(now, st, "closes the tab")
        if st.state == "waiting":  # nobody watches the start page: the spawn leaves the queue
            self._leave_queue(st, now, "closed the tab while waiting")

    def _last_activity(self, st: _Student, now: float) -> float:
        """JupyterHub's last_activity: now while the tab is open or a job runs (kernel output)."""
        if st.tab_open or st.job is not None:
            return now
        return max(st.tab_closed_at, st.last_job_end, st.granted_at)

    # --- the hub's side -------------------------------------------------------------------------
    def _usage(self, owner: str) -> Usage:
        """As GPUService.usage(): devices held or waited for by this user and per quota, besides `owner`."""
        prefix = owner.split("/", 1)[0] + "/"
        user = 0
        by_quota: Counter = Counter()
        claims = [(lease.owner, len(lease.devices), lease.charged_to) for lease in self.ledger.leases.values()]
        claims += [(w.owner, w.request.count, w.charged_to) for w in self.ledger.waiting()]
        for who, count, charged in claims:
            if who == owner:
                continue
            if who.startswith(prefix):
                user += count
            by_quota[charged] += count
        return Usage(user, dict(by_quota))

    def _ask(self, st: _Student, now: float, why: str) -> None:
        """One start: admission, then the ledger, in one step (GPUService.reserve)."""
        outcome = admission.admit(
            username=st.name,
            user_options={"profile": PROFILE},
            profile_list=self.profiles,
            default_image="gpuhub/notebook:latest",
            home_path="/home/jovyan",
            quota_default=QUOTA_DEFAULT,
            quota_groups={},
            user_groups={},
            usage=self._usage(st.owner),
            usable=self.ledger.usable,
        )
        if isinstance(outcome, Refusal):
            self.result.refusals[f"{outcome.status} {outcome.message}"] += 1
            self.result.asks.append((why, 0.0, "refused"))
            self._log(now, st, f"refused: {outcome.message}")
            st.culled = False
            self._drop_due(st)
            return
        st.asked_at, st.why = now, why
        st.starts += 1
        lease = self.ledger.request(st.owner, outcome.request, outcome.priority, outcome.charged_to)
        if lease is not None:
            self._granted(st, lease, now)
            return
        st.state = "waiting"
        st.wait_token += 1
        self._log(now, st, f"queued ({why}), position {self.ledger.position(st.owner)[0]}")
        self._push(now + self.wait_timeout, _TIMEOUT, st, st.wait_token)

    def _timeout(self, now: float, st: _Student, token: int) -> None:
        if st.state != "waiting" or token != st.wait_token:
            return
        # GPUDockerSpawner's words when gpu_wait_timeout runs out
        label = self.profiles[0].gpu.label
        message = f"503 No {label} became free within {self.wait_timeout:.0f} s; try again later"
        self.result.refusals[message] += 1
        self.result.asks.append((st.why, now - st.asked_at, "refused"))
        self._log(now, st, "refused: no GPU became free")
        st.state = "none"
        st.culled = False  # the next start is a retry
        self._drop_due(st)
        self._wake(self.ledger.cancel(st.owner), now)

    def _leave_queue(self, st: _Student, now: float, why: str) -> None:
        self.result.left_queue[why] += 1
        self.result.asks.append((st.why, now - st.asked_at, "left"))
        self._log(now, st, f"leaves the queue: {why}")
        st.state = "none"
        st.culled = False
        self._wake(self.ledger.cancel(st.owner), now)

    def _wake(self, grants: list[Lease], now: float) -> None:
        """As GPUService._wake(): each grant goes to its waiting start, or back if nobody waits."""
        for lease in grants:
            st = self.students[lease.owner.split("/", 1)[0]]
            if st.state == "waiting":
                self._granted(st, lease, now)
            else:
                self._wake(self.ledger.release(lease.id), now)

    def _granted(self, st: _Student, lease: Lease, now: float) -> None:
        st.container = f"{st.name}-{st.starts}"
        st.lease = self.ledger.bind(lease.id, st.container)  # the container exists from now on
        st.state = "running"
        st.granted_at = now
        st.culled = False
        self.holding[st.owner] = st
        self.result.waits.append(Wait(st.name, st.why, st.asked_at, now))
        self.result.asks.append((st.why, now - st.asked_at, "granted"))
        self._log(now, st, f"granted {lease.devices[0][:12]} after {now - st.asked_at:.0f} s ({st.why})")
        st.watch = culling.Watch(st.owner, now, self.limits, lease.devices, lease.charged_to) if self.limits else None
        st.mark_at, st.mark_kind = now, self._kind(st)
        self._run_due(st, now)

    def _end(self, st: _Student, now: float, reason: str, detail: str = "") -> None:
        """The server is stopped; the engine confirms its container is gone: the lease ends."""
        self._close_mark(st, now)
        if st.job is not None:
            self.result.cut_s += self._job_left(st, now)
            st.job = None
            st.job_token += 1
            st.last_job_end = now
        self.result.ends[reason] += 1
        self.result.stops.append((now, st.name, reason))
        if reason not in (USER_STOP, END_OF_DAY) and st.remaining > 0:
            self.result.culled_with_work_left += 1
        st.culled = reason not in (USER_STOP, END_OF_DAY)
        self._log(now, st, f"end: {reason}" + (f" ({detail})" if detail else ""))
        st.state = "none"
        st.lease = None
        st.watch = None
        del self.holding[st.owner]
        self._wake(self.ledger.gone(st.container), now)

    def _job_left(self, st: _Student, now: float) -> float:
        return max(0.0, st.job_started + st.job.duration - now)

    def _run_due(self, st: _Student, now: float) -> None:
        if st.state != "running" or st.job is not None or not st.due:
            return
        st.job = st.due.popleft()
        st.job_started = now
        st.remaining -= 1
        st.ran_any = True
        st.job_token += 1
        self.result.jobs_run += 1
        self._push(now + st.job.duration, _JOB_END, st, st.job_token)
        self._mark(st, now)

    def _drop_due(self, st: _Student) -> None:
        self.result.jobs_not_run += len(st.due)
        self.result.not_run_s += sum(j.duration for j in st.due)
        st.remaining -= len(st.due)
        st.due.clear()

    # --- telemetry samples and the cullers ------------------------------------------------------
    def _sample(self, now: float) -> None:
        claims = len(self.ledger.leases) + len(self.ledger.waiting())
        if claims > self.result.peak_claims:
            self.result.peak_claims, self.result.peak_claims_at = claims, now
        for st in list(self.holding.values()):
            if st.watch is None:
                continue
            activity = st.job.activity if st.job is not None else 0.0
            readings = {uuid: culling.Activity(True, activity) for uuid in st.lease.devices}
            culling.observe(st.watch, readings, now)
            verdict = culling.evaluate(st.watch, now, self.policy.warning, last_activity=self._last_activity(st, now))
            if verdict.action == "warn":
                self.result.warnings += 1
                self._log(now, st, f"warned: {verdict.notice.reason}")
            elif verdict.action == "clear":
                self.result.warnings_cleared += 1
                self._log(now, st, "warning cleared")
            elif verdict.action == "stop":
                self._end(st, now, verdict.notice.reason, verdict.notice.detail)
        if now + SAMPLE_S <= self.until:
            self._push(now + SAMPLE_S, _SAMPLE)

    def _cull(self, now: float) -> None:
        """jupyterhub-idle-culler: stop servers whose last_activity is older than its timeout."""
        timeout = self.policy.hub_idle_timeout
        for st in list(self.holding.values()):
            inactive = now - self._last_activity(st, now)
            if inactive > timeout:
                self._end(st, now, HUB_CULL, f"no activity for {budget.span(inactive)}")
        if now + self._cull_every <= self.until:
            self._push(now + self._cull_every, _CULL)

    def _finish(self) -> None:
        now = self.until
        for st in list(self.holding.values()):
            self._close_mark(st, now)
            if st.job is not None:
                self.result.cut_s += self._job_left(st, now)
            self.result.ends[END_OF_DAY] += 1
            self.result.stops.append((now, st.name, END_OF_DAY))
            st.mark_at = now
        self.result.still_waiting = len(self.ledger.waiting())

    # --- accounting -----------------------------------------------------------------------------
    def _kind(self, st: _Student) -> str:
        if st.job is not None:
            return "busy" if st.job.activity >= self.result.threshold else "job below the threshold"
        if st.remaining > 0:
            return "between jobs" if st.ran_any else "before the first job"
        return "after the last job"

    def _close_mark(self, st: _Student, now: float) -> None:
        self.result.held[st.mark_kind] += (now - st.mark_at) * len(st.lease.devices)
        st.mark_at = now

    def _mark(self, st: _Student, now: float) -> None:
        if st.state != "running":
            return
        self._close_mark(st, now)
        st.mark_kind = self._kind(st)


def simulate(
    sessions: Sequence[Session],
    policy: Policy,
    devices: int = 14,
    wait_timeout: float = 600.0,
    until: float | None = None,
    threshold: float = 5.0,
) -> Result:
    return Day(sessions, policy, devices, wait_timeout, until, threshold).run()


# --- reporting ------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else 0.0


def summary(r: Result) -> dict:
    waits = [w.seconds for w in r.waits]
    everyone = [seconds for _, seconds, _ in r.asks]  # a refused or abandoned start counts its time in the queue
    by_why: dict[str, dict] = {}
    for why, seconds, outcome in r.asks:
        row = by_why.setdefault(why, {"asked": 0, "granted": 0, "refused": 0, "left": 0, "waits": []})
        row["asked"] += 1
        row[outcome] += 1
        if outcome == "granted":
            row["waits"].append(seconds)
    for row in by_why.values():
        v = row.pop("waits")
        row["wait_median_s"] = round(statistics.median(v), 1) if v else None
        row["wait_p95_s"] = round(pct(v, 0.95), 1) if v else None
    allocated = r.allocated
    return {
        "policy": r.policy.name,
        "limits": r.policy.limits,
        "warning_s": r.policy.warning,
        "hub_idle_timeout_s": r.policy.hub_idle_timeout,
        "allocated_device_hours": round(allocated / 3600, 2),
        "busy_device_hours": round(r.held["busy"] / 3600, 2),
        "idle_device_hours": round(r.idle / 3600, 2),
        "idle_share": round(r.idle / allocated, 4) if allocated else 0.0,
        "idle_share_by_kind": {k: round(r.held[k] / allocated, 4) if allocated else 0.0 for k in IDLE_KINDS},
        "grants": len(waits),
        "wait_median_s": round(statistics.median(waits), 1) if waits else 0.0,
        "wait_p95_s": round(pct(waits, 0.95), 1),
        "wait_max_s": round(max(waits, default=0.0), 1),
        "granted_at_once": sum(1 for w in waits if w == 0),
        "starts": len(r.asks),
        "time_to_gpu_median_s": round(statistics.median(everyone), 1) if everyone else 0.0,
        "time_to_gpu_p95_s": round(pct(everyone, 0.95), 1),
        "starts_by_why": dict(sorted(by_why.items())),
        "refusals": dict(r.refusals),
        "left_queue": dict(r.left_queue),
        "still_waiting_at_end": r.still_waiting,
        "ends": dict(r.ends),
        "culled_with_work_left": r.culled_with_work_left,
        "warnings": r.warnings,
        "warnings_cleared": r.warnings_cleared,
        "jobs_run": r.jobs_run,
        "jobs_not_run": r.jobs_not_run,
        "job_hours_not_run": round(r.not_run_s / 3600, 2),
        "job_hours_cut": round(r.cut_s / 3600, 2),
        "peak_held_plus_waiting": r.peak_claims,
        "peak_held_plus_waiting_at": clock(r.peak_claims_at),
        "wall_s": round(r.wall_s, 3),
    }


def report(trace: dict, rows: list[dict]) -> str:
    out = [
        f"Class day: {trace['sessions']} sessions of {trace['students']} students on {trace['devices']} x {MODEL}"
        f" ({trace['trace']})",
        f"  day {trace['from']}-{trace['until']}; peak demand {trace['peak_demand']} students between arrival and"
        f" their last job's end at {trace['peak_demand_at']} = {trace['peak_demand_over_supply']:.2f}x supply;"
        f" {trace['jobs']} jobs, {trace['job_hours']:.1f} GPU-hours of work",
        "",
    ]
    for row in rows:
        lim = row["limits"]
        if lim:
            what = (
                f"gpu_idle_timeout {budget.span(lim['gpu_idle_timeout'])} (threshold {lim['gpu_idle_threshold']:g} %,"
                f" warning {budget.span(row['warning_s'])}) + hub culler {budget.span(row['hub_idle_timeout_s'])}"
            )
        else:
            what = f"hub culler {budget.span(row['hub_idle_timeout_s'])} only (an open tab is activity)"
        out.append(f"  {row['policy']:9} {what}")
    out.append("")
    names = [row["policy"] for row in rows]
    table = [
        ("allocated device-hours", [f"{r['allocated_device_hours']:.1f}" for r in rows]),
        (f"  busy (activity >= {trace['threshold']:g} %)", [f"{r['busy_device_hours']:.1f}" for r in rows]),
        ("  idle", [f"{r['idle_device_hours']:.1f}" for r in rows]),
        ("idle share of allocated", [f"{r['idle_share']:.1%}" for r in rows]),
    ]
    for kind in IDLE_KINDS:
        table.append((f"  {kind}", [f"{r['idle_share_by_kind'][kind]:.1%}" for r in rows]))
    table += [
        ("grants (incl. re-arrivals)", [str(r["grants"]) for r in rows]),
        ("  granted at once", [str(r["granted_at_once"]) for r in rows]),
        ("queue wait of grants: median", [_min(r["wait_median_s"]) for r in rows]),
        ("queue wait of grants: p95", [_min(r["wait_p95_s"]) for r in rows]),
        ("queue wait of grants: max", [_min(r["wait_max_s"]) for r in rows]),
    ]
    table += [
        ("starts asked (grants, refusals, left)", [str(r["starts"]) for r in rows]),
        ("  time in queue, all starts: median", [_min(r["time_to_gpu_median_s"]) for r in rows]),
        ("  time in queue, all starts: p95", [_min(r["time_to_gpu_p95_s"]) for r in rows]),
    ]
    for why in sorted({why for r in rows for why in r["starts_by_why"]}):
        cells = []
        for r in rows:
            w = r["starts_by_why"].get(why)
            if not w:
                cells.append("-")
                continue
            wait = f", {w['wait_median_s']:.0f}/{w['wait_p95_s']:.0f} s" if w["granted"] else ""
            cells.append(f"{w['granted']}/{w['asked']}{wait}")
        table.append((f"  {why}: granted/asked, wait med/p95", cells))
    table.append(("refusals", [str(sum(r["refusals"].values())) for r in rows]))
    for msg in sorted({m for r in rows for m in r["refusals"]}):
        table.append((f"  {msg[:60]}", [str(r["refusals"].get(msg, 0)) for r in rows]))
    table.append(("left the queue", [str(sum(r["left_queue"].values())) for r in rows]))
    for why in sorted({m for r in rows for m in r["left_queue"]}):
        table.append((f"  {why}", [str(r["left_queue"].get(why, 0)) for r in rows]))
    table.append(("servers ended", [str(sum(r["ends"].values())) for r in rows]))
    for why in sorted({m for r in rows for m in r["ends"]}):
        table.append((f"  {_END_WORDS.get(why, why)}", [str(r["ends"].get(why, 0)) for r in rows]))
    table += [
        ("culled with jobs still to run", [str(r["culled_with_work_left"]) for r in rows]),
        ("warnings / cleared by use", [f"{r['warnings']} / {r['warnings_cleared']}" for r in rows]),
        ("jobs run / not run", [f"{r['jobs_run']} / {r['jobs_not_run']}" for r in rows]),
        ("GPU-hours of jobs not run", [f"{r['job_hours_not_run']:.2f}" for r in rows]),
        ("peak held + waiting", [f"{r['peak_held_plus_waiting']} at {r['peak_held_plus_waiting_at']}" for r in rows]),
        ("wall time", [f"{r['wall_s'] * 1e3:.0f} ms" for r in rows]),
    ]
    width = max(len(label) for label, _ in table)
    cols = [max(len(n), *(len(c[i]) for _, c in table)) for i, n in enumerate(names)]
    out.append(f"{'':{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cols, strict=True)))
    for label, cells in table:
        out.append(f"{label:{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, cols, strict=True)))
    out.append("")
    for r in rows:
        idle_ok = r["idle_share"] <= 0.10
        # A start refused after the whole gpu_wait_timeout waited too: the goal is judged over all starts.
        wait_ok = r["time_to_gpu_median_s"] <= 120
        out.append(
            f"{r['policy']:9} goals at {trace['peak_demand_over_supply']:.2f}x supply: idle share <= 10 %"
            f" {'met' if idle_ok else 'NOT met'} ({r['idle_share']:.1%}); median wait <= 2 min"
            f" {'met' if wait_ok else 'NOT met'} ({r['time_to_gpu_median_s'] / 60:.1f} min over all"
            f" {r['starts']} starts; {r['wait_median_s'] / 60:.1f} min over the {r['grants']} granted,"
            f" {sum(r['refusals'].values())} refused)"
        )
    return "\n".join(out)


def _min(seconds: float) -> str:
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


_END_WORDS = {
    USER_STOP: "stopped by the student",
    "gpu-idle": "culled: GPU idle (gpu_idle_timeout)",
    HUB_CULL: "culled: no activity (hub culler)",
    "idle": "culled: no activity (profile idle_timeout)",
    "time-limit": "culled: max_runtime",
    END_OF_DAY: END_OF_DAY,
}


def describe(sessions: Sequence[Session], source: str, devices: int, until: float, threshold: float) -> dict:
    peak, at = peak_demand(sessions)
    return {
        "threshold": threshold,
        "trace": source,
        "sessions": len(sessions),
        "students": len({s.student for s in sessions}),
        "devices": devices,
        "from": clock(min(s.arrive for s in sessions)),
        "until": clock(until),
        "jobs": sum(len(s.jobs) for s in sessions),
        "job_hours": sum(j.duration for s in sessions for j in s.jobs) / 3600,
        "peak_demand": peak,
        "peak_demand_at": clock(at),
        "peak_demand_over_supply": round(peak / devices, 3),
    }


def _shown(path: str) -> str:
    """A path as the report shows it: relative to the working directory where it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _duration(option: str):
    def parse(value: str) -> float:
        try:
            return budget.duration(value, option)
        except budget.BudgetError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _time(value: str) -> float:
    try:
        return parse_time(value, "--until")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", default=str(DEFAULT_TRACE), help="a JSON Lines trace (docs/class-day.md)")
    parser.add_argument("--devices", type=int, default=14, help="whole GPUs on the host")
    parser.add_argument(
        "--gpu-idle-timeout", type=_duration("--gpu-idle-timeout"), default=900.0, help="gpuhub policy (default 15m)"
    )
    parser.add_argument("--gpu-idle-threshold", type=float, default=5.0, help="percent activity (default 5)")
    parser.add_argument(
        "--warning", type=_duration("--warning"), default=300.0, help="notice before a stop (default 5m)"
    )
    parser.add_argument(
        "--hub-idle-timeout", type=_duration("--hub-idle-timeout"), default=3600.0, help="hub-wide culler (default 1h)"
    )
    parser.add_argument(
        "--wait-timeout", type=_duration("--wait-timeout"), default=600.0, help="gpu_wait_timeout (default 600 s)"
    )
    parser.add_argument("--until", type=_time, help="end of the day (default: the last time the trace names)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument("--log", metavar="STUDENT", help="also print one student's events under each policy")
    parser.add_argument("--generate", metavar="OUT", help="write a generated class-day trace and exit")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--students", type=int, default=120)
    parser.add_argument("--lectures", type=int, default=6)
    args = parser.parse_args(argv)
    if args.generate:
        sessions = generate(args.seed, args.students, args.lectures)
        header = (
            f"# class day: {args.students} students, {args.lectures} lectures; python -m benchmarks.class_day"
            f" --generate {Path(args.generate).name} --seed {args.seed}\n"
        )
        Path(args.generate).write_text(header + dump(sessions))
        peak, at = peak_demand(sessions)
        print(f"wrote {len(sessions)} sessions to {args.generate}; peak demand {peak} at {clock(at)}")
        return 0
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    try:
        sessions = load(args.trace)
        results = [
            simulate(sessions, p, args.devices, args.wait_timeout, args.until, args.gpu_idle_threshold)
            for p in policies(args.gpu_idle_timeout, args.gpu_idle_threshold, args.warning, args.hub_idle_timeout)
        ]
    except (TraceError, profiles.ProfileError) as e:
        print(f"class_day: {e}", file=sys.stderr)
        return 2
    trace = describe(sessions, _shown(args.trace), args.devices, results[0].until, args.gpu_idle_threshold)
    rows = [summary(r) for r in results]
    if args.json:
        print(json.dumps({"trace": trace, "policies": rows}, indent=2))
    else:
        print(report(trace, rows))
        print(f"wall time: {sum(r.wall_s for r in results):.2f} s for both policies")
    if args.log:
        for r in results:
            print(f"\n{r.policy.name}: {args.log}", file=sys.stderr if args.json else sys.stdout)
            for t, who, what in r.log:
                if who == args.log:
                    print(f"  {clock(t)} {what}", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
