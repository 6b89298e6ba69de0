"""When a server is stopped for its resources' sake, and what its user is told. Pure.

A profile may set limits (`Limits`); the GPU service watches each running server
that has any (`Watch`) and asks `evaluate()` at every telemetry sample:

- **GPU-idle**: every granted device stayed below the activity threshold for
  `gpu_idle_timeout`. A device without an activity figure (NVML failed, a MIG
  slice without GPM) is never idle: the clock only runs while every device *says*
  it is idle. Memory in use is no sign of activity (a student who walked away
  keeps their tensors), so only activity counts.
- **Time limit**: `max_runtime` since the server started.
- **Idle**: no activity (JupyterHub's `last_activity`) for the profile's
  `idle_timeout`, which is meant to be shorter than the hub-wide culler's.
- **Budget**: the GPU-hour budget the server is charged to runs out (the service
  computes when, from the usage records and the devices burning it).

The earliest of these deadlines decides. From `warning` seconds before it the
user sees a notice (in JupyterLab and on the hub's pages); at the deadline the
server is stopped and its home is kept. A notice goes away when its cause does
(the GPU is used again).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .budget import span, when

REASONS = ("gpu-idle", "time-limit", "idle", "budget")
STOP_RETRY_S = 120  # a stop asked for whose server is still there after this is asked again


@dataclass(frozen=True)
class Limits:
    gpu_idle_timeout: float | None = None  # seconds
    gpu_idle_threshold: float = 5.0  # percent activity below which a device counts as idle
    max_runtime: float | None = None
    idle_timeout: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.gpu_idle_timeout, self.max_runtime, self.idle_timeout))


@dataclass(frozen=True)
class Notice:
    reason: str  # one of REASONS
    message: str  # for the user, before the stop
    stop_at: float  # epoch seconds
    detail: str  # why, after the stop: "its GPU was idle for 30 min"

    def stopped(self, at: float) -> str:
        return stopped_message(at, self.detail)


def stopped_message(at: float, detail: str) -> str:
    return f"Stopped at {when(at)}: {detail}. Your files are kept."


@dataclass
class Watch:
    """One running server with limits. `gpu_idle_since` is the only state the policy keeps."""

    owner: str
    started: float
    limits: Limits
    devices: tuple[str, ...] = ()
    charged_to: str = ""
    gpu_idle_since: float | None = None
    notice: Notice | None = None  # the warning shown now, if any
    stopping: bool = False
    stop_asked: float = 0.0  # when the stop was last asked for
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Activity:
    """What the policy needs from one telemetry reading."""

    ok: bool
    activity: float | None  # percent; None: no activity figure


@dataclass(frozen=True)
class BudgetEnd:
    """When the budget a server is charged to runs out at the current burn rate."""

    at: float
    text: str  # "your GPU-hour budget (20 GPU-hours per week)"


@dataclass(frozen=True)
class Verdict:
    action: str  # "none", "warn", "clear" (a warning no longer applies) or "stop"
    notice: Notice | None = None


def observe(watch: Watch, readings: Mapping[str, Activity], now: float) -> None:
    """Advance the GPU-idle clock with one sample of the server's devices."""
    if not watch.devices or watch.limits.gpu_idle_timeout is None:
        watch.gpu_idle_since = None
        return
    threshold = watch.limits.gpu_idle_threshold
    idle = True
    for uuid in watch.devices:
        r = readings.get(uuid)
        if r is None or not r.ok or r.activity is None or r.activity >= threshold:
            idle = False  # busy, or nobody can tell: never idle on missing data
            break
    if not idle:
        watch.gpu_idle_since = None
    elif watch.gpu_idle_since is None:
        watch.gpu_idle_since = now


def deadlines(
    watch: Watch, now: float, last_activity: float | None, budget_end: BudgetEnd | None
) -> list[tuple[float, str, Callable[[float], tuple[str, str]]]]:
    """(stop_at, reason, words(stop_at) -> (warning, detail)) for every limit that applies."""
    lim = watch.limits
    found = []
    if lim.gpu_idle_timeout is not None and watch.gpu_idle_since is not None:
        at = watch.gpu_idle_since + lim.gpu_idle_timeout

        def gpu_idle(at, idle_for=now - watch.gpu_idle_since):
            noun = "GPU has" if len(watch.devices) == 1 else "GPUs have"
            return (
                f"Your {noun} been idle for {span(idle_for)}; this server stops at {when(at)}"
                f" (in {span(at - now)}) unless it is used.",
                f"its GPU was idle for {span(lim.gpu_idle_timeout)}",
            )

        found.append((at, "gpu-idle", gpu_idle))
    if lim.max_runtime is not None:

        def time_limit(at):
            return (
                f"This server reaches its time limit of {span(lim.max_runtime)} at {when(at)}"
                f" (in {span(at - now)}) and stops then. Save your work.",
                f"it reached its time limit of {span(lim.max_runtime)}",
            )

        found.append((watch.started + lim.max_runtime, "time-limit", time_limit))
    if lim.idle_timeout is not None:
        since = max(last_activity or watch.started, watch.started)

        def idle(at, idle_for=now - since):
            return (
                f"This server has had no activity for {span(idle_for)}; it stops at {when(at)}"
                f" (in {span(at - now)}) unless it is used.",
                f"it had no activity for {span(lim.idle_timeout)}",
            )

        found.append((since + lim.idle_timeout, "idle", idle))
    if budget_end is not None:

        def budget(at):
            return (
                f"{budget_end.text[0].upper()}{budget_end.text[1:]} runs out at {when(at)}"
                f" (in {span(at - now)}); this server stops then.",
                f"{budget_end.text} ran out",
            )

        found.append((budget_end.at, "budget", budget))
    return found


def evaluate(
    watch: Watch, now: float, warning: float, last_activity: float | None = None, budget_end: BudgetEnd | None = None
) -> Verdict:
    """What to do with this server now; updates `watch.notice`."""
    if watch.stopping:
        # Asked for; the server is still here. A stop that failed on the engine side is asked again.
        if watch.notice is None or now < watch.stop_asked + STOP_RETRY_S:
            return Verdict("none", watch.notice)
        watch.stop_asked = now
        return Verdict("stop", watch.notice)
    found = deadlines(watch, now, last_activity, budget_end)
    if not found:
        return _clear(watch)
    at, reason, words = min(found, key=lambda f: f[0])
    warning_text, detail = words(at)
    notice = Notice(reason, warning_text, at, detail)
    if now >= at:
        watch.stopping, watch.stop_asked = True, now
        watch.notice = notice
        return Verdict("stop", notice)
    if now >= at - warning:
        first = watch.notice is None or watch.notice.reason != reason
        watch.notice = notice
        return Verdict("warn" if first else "none", notice)
    return _clear(watch)


def _clear(watch: Watch) -> Verdict:
    if watch.notice is None:
        return Verdict("none")
    watch.notice = None
    return Verdict("clear")
