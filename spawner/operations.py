"""GPU operations: how busy every granted device is, GPU-hour records, budgets, and culling.

One per hub, owned by the GPU service, which tells it when a lease starts using
devices (`lease_bound`) and when it ends (`lease_ended`). Every `interval`
seconds it:

1. samples every device (NVML, in a thread of its own: never on the event loop)
   and exports the readings as Prometheus metrics labelled with the lease's
   user and server;
2. advances each watched server's GPU-idle clock and asks `culling.evaluate`
   what to do: nothing, warn (the notice the user sees in JupyterLab and on the
   hub's pages), or stop (through the hub's REST API, as an admin would, so the
   hub's own bookkeeping of the server stays right);
3. renews the usage records' heartbeat, so a crash loses at most one interval.

Usage records go to the hub's database (`usage.UsageStore`), in one writer
thread, in the order the events happened.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote

from prometheus_client import Counter, Gauge

from . import budget, culling, usage
from .allocator import Lease
from .devices import Device
from .telemetry import Reading

NO_TELEMETRY_PERIOD_S = 60  # heartbeats and limits go on with telemetry off
SAMPLE_TIMEOUT_S = 30  # at least; three intervals at long intervals
_LABELS = ["device", "model", "mig_profile", "user", "server"]
ACTIVITY = Gauge(
    "gpuhub_device_activity_percent",
    "GPU activity used for idle decisions: GPM SM utilization where supported, else the utilization rate;"
    " absent where no activity figure exists",
    _LABELS + ["source"],
)
UTILIZATION = Gauge("gpuhub_device_utilization_percent", "NVML utilization rate (whole GPUs)", _LABELS)
MEMORY_USED = Gauge("gpuhub_device_memory_used_bytes", "Device memory in use (no sign of activity)", _LABELS)
MEMORY_TOTAL = Gauge("gpuhub_device_memory_total_bytes", "Device memory", _LABELS)
TELEMETRY_OK = Gauge("gpuhub_device_telemetry_ok", "1 if NVML answered for the device at the last sample", _LABELS)
IDLE_SECONDS = Gauge(
    "gpuhub_server_gpu_idle_seconds",
    "Seconds every device of a server has been below its idle threshold",
    ["user", "server"],
)
CULLED = Counter("gpuhub_servers_culled", "Servers stopped by gpuhub's limits", ["reason"])
WARNED = Counter("gpuhub_servers_warned", "Stop warnings shown to users", ["reason"])
LEASES_ENDED = Counter("gpuhub_leases_ended", "GPU leases that ended, by end reason", ["reason"])


@dataclass
class ServerInfo:
    """What a spawner tells about a running server so its limits can be watched."""

    owner: str
    profile: str
    limits: culling.Limits
    started: float  # epoch seconds
    charged_to: str = ""
    devices: tuple[str, ...] = ()
    last_activity: Callable[[], float | None] = field(default=lambda: None)


StopServer = Callable[[str, str], Awaitable[bool]]  # (owner, reason) -> the hub accepted the stop


class Operations:
    def __init__(
        self,
        *,
        devices: Callable[[], Mapping[str, Device]],
        leases: Callable[[], Iterable[Lease]],
        sampler=None,
        store: usage.UsageStore | None = None,
        stop_server: StopServer | None = None,
        quotas: Callable[[str], Mapping[str, object]] | None = None,
        interval: float = 10,
        warning: float = 300,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.devices = devices
        self.leases = leases
        self.sampler = sampler
        self.store = store
        self.stop_server = stop_server
        self.quotas = quotas  # user name -> {quota source: Quota} for the budgets that may apply
        self.interval = interval
        self.warning = warning
        self.log = log or logging.getLogger("gpuhub")
        self.clock = clock
        self.readings: dict[str, Reading] = {}
        self.watches: dict[str, culling.Watch] = {}
        self.servers: dict[str, ServerInfo] = {}
        self._pending_stop: dict[str, str] = {}  # owner -> the reason gpuhub asked the hub to stop it for
        self._metric_labels: dict[Gauge, set[tuple]] = {}
        self._nvml = ThreadPoolExecutor(1, thread_name_prefix="gpuhub-nvml")
        self._db = ThreadPoolExecutor(1, thread_name_prefix="gpuhub-usage")
        self._task: asyncio.Task | None = None
        self._sample: asyncio.Future | None = None
        self._writes: set[asyncio.Future] = set()

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        # With telemetry off (interval 0) the loop still runs: heartbeats, time limits and budgets.
        if self._task is None:
            self._task = asyncio.ensure_future(self._forever())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.sampler is not None:
            self._nvml.submit(self.sampler.close)
        if self.store is not None:
            self._db.submit(self.store.close)

    async def _forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as e:  # one bad tick must not end telemetry for the hub's life
                self.log.warning("gpuhub: telemetry/culling failed (%s); will retry in %.0f s", e, self.period)
            await asyncio.sleep(self.period)

    @property
    def period(self) -> float:
        """Seconds between ticks: the telemetry interval, or NO_TELEMETRY_PERIOD_S with telemetry off."""
        return self.interval if self.interval > 0 else NO_TELEMETRY_PERIOD_S

    # --- usage records -----------------------------------------------------------------------------
    def _write(self, fn, *args) -> asyncio.Future | None:
        """Queue a write to the usage store; writes run one at a time, in order."""
        if self.store is None:
            return None
        future = asyncio.get_running_loop().run_in_executor(self._db, fn, *args)
        self._writes.add(future)

        def done(f):
            self._writes.discard(f)
            if not f.cancelled() and f.exception() is not None:
                self.log.error("gpuhub: could not write GPU usage records (%s)", f.exception())

        future.add_done_callback(done)
        return future

    async def flush(self) -> None:
        """Wait for the writes queued so far (tests, shutdown)."""
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    def lease_bound(self, lease: Lease, start: float, profile: str = "") -> None:
        """A container now uses the lease's devices: open its usage records (idempotent)."""
        user, _, server = lease.owner.partition("/")
        devices = self.devices()
        records = [
            usage.Record(
                lease_id=lease.id,
                device=uuid,
                user=user,
                server=server,
                charged_to=lease.charged_to,
                profile=profile,
                model=devices[uuid].model if uuid in devices else "",
                mig_profile=(devices[uuid].mig_profile or "") if uuid in devices else "",
                start=start,
            )
            for uuid in lease.devices
        ]
        self._write(self.store.opened, records) if self.store else None

    def lease_ended(self, lease: Lease, reason: str) -> None:
        LEASES_ENDED.labels(reason).inc()
        if self.store is not None:
            self._write(self.store.closed, lease.id, self.clock(), reason)

    def rebuilt(self, live: set[str]) -> None:
        """After a hub start: records of leases that no container carries any more end when last seen."""
        if self.store is None:
            return
        future = self._write(self.store.close_lost, live)

        def report(f):
            if not f.cancelled() and f.exception() is None and f.result():
                self.log.warning(
                    "gpuhub: %d GPU lease(s) ended while the hub was down; their usage ends when they were last seen",
                    len(f.result()),
                )

        future.add_done_callback(report)

    async def query(self, fn, *args, **kwargs):
        """Run a usage-store read in its thread (after the writes queued before it)."""
        if self.store is None:
            raise usage.UsageError("GPU usage records are off on this hub")
        return await asyncio.get_running_loop().run_in_executor(self._db, lambda: fn(*args, **kwargs))

    # --- budgets ---------------------------------------------------------------------------------------
    async def budget_uses(self, username: str, quotas: Iterable, now: float | None = None) -> list[budget.Use]:
        """How much of every budget of these quotas is used now (this user's share, and the group's)."""
        now = self.clock() if now is None else now
        uses = []
        for q in quotas:
            for scope, b in q.budgets.items():
                start, refill = budget.window(b.period, now)
                who = {"user": username} if scope == "user" else {}
                # At the window's first instant nothing can have been used (and the store refuses an empty period).
                used = (
                    0.0
                    if now <= start
                    else await self.query(self.store.used_hours, start, now, charged_to=q.source, **who)
                )
                uses.append(budget.Use(q.source, scope, b, used, refill))
        return uses

    async def exhausted(self, username: str, quotas: Iterable, devices: int) -> dict[str, str]:
        """Quota sources whose budget cannot pay for `devices` devices until the warning time, with why."""
        if self.store is None or devices == 0:
            return {}
        found: dict[str, str] = {}
        for use in await self.budget_uses(username, quotas):
            # A start that would be warned at once is refused: it would run past the budget.
            if use.left <= devices * self.warning / 3600 and use.source not in found:
                found[use.source] = use.refusal()
        return found

    async def _budget_ends(self, now: float) -> dict[str, culling.BudgetEnd]:
        """owner -> when the budget its devices are charged to runs out at the current burn rate
        (from `now`, the sample's time: a used-up budget ends at `now`, which the policy stops at)."""
        if self.store is None or self.quotas is None:
            return {}
        leases = [lease for lease in self.leases() if lease.container is not None]
        ends: dict[str, culling.BudgetEnd] = {}
        by_group: dict[str, int] = {}
        by_user: dict[tuple[str, str], int] = {}
        for lease in leases:
            by_group[lease.charged_to] = by_group.get(lease.charged_to, 0) + len(lease.devices)
            key = (lease.owner.partition("/")[0], lease.charged_to)
            by_user[key] = by_user.get(key, 0) + len(lease.devices)
        cache: dict[tuple, list[budget.Use]] = {}
        for lease in leases:
            user = lease.owner.partition("/")[0]
            quota = self.quotas(user).get(lease.charged_to)
            if quota is None or not quota.budgets:
                continue
            key = (user, lease.charged_to)
            if key not in cache:
                cache[key] = await self.budget_uses(user, [quota], now)
            for use in cache[key]:
                burn = by_user[key] if use.scope == "user" else by_group[lease.charged_to]
                at = now + max(use.left, 0) * 3600 / burn
                if at >= use.refill:  # the window refills before the budget runs out
                    continue
                text = (
                    f"your GPU-hour budget ({use.budget})"
                    if use.scope == "user"
                    else f"group {use.source}'s GPU-hour budget ({use.budget})"
                )
                if lease.owner not in ends or at < ends[lease.owner].at:
                    ends[lease.owner] = culling.BudgetEnd(at, text)
        return ends

    # --- watching servers ----------------------------------------------------------------------------------
    def watch(self, info: ServerInfo) -> None:
        self.servers[info.owner] = info
        known = self.watches.get(info.owner)
        if known is None or known.devices != info.devices or known.started != info.started:
            # A new start: a stop noted before it (for an old server, or refused) must not end it.
            self._pending_stop.pop(info.owner, None)
            self.watches[info.owner] = culling.Watch(
                info.owner, info.started, info.limits, info.devices, info.charged_to
            )

    def unwatch(self, owner: str) -> culling.Notice | None:
        """The server stopped: forget it; returns the notice it was stopped under, if gpuhub stopped it."""
        self.servers.pop(owner, None)
        self._pending_stop.pop(owner, None)  # asked for, but the hub found it gone without stopping it
        watch = self.watches.pop(owner, None)
        user, _, server = owner.partition("/")
        _remove_labels(IDLE_SECONDS, [(user, server)])
        return watch.notice if watch is not None and watch.stopping else None

    def notice(self, owner: str) -> culling.Notice | None:
        watch = self.watches.get(owner)
        return watch.notice if watch is not None else None

    def stop_reason(self, owner: str) -> str:
        """Why the server being stopped now stops: the reason gpuhub asked for, else through the hub."""
        return self._pending_stop.pop(owner, "user")

    def ask_stop(self, owner: str, reason: str) -> None:
        """The next stop of `owner` is for `reason` (a lab admin's stop, say)."""
        self._pending_stop[owner] = reason

    # --- one sample -------------------------------------------------------------------------------------------
    async def tick(self) -> None:
        now = self.clock()
        devices = self.devices()
        if self.sampler is not None and devices and self.interval > 0:
            if self._sample is None or self._sample.done():  # never queue behind a hung one
                self._sample = asyncio.get_running_loop().run_in_executor(
                    self._nvml, self.sampler.sample, list(devices.values())
                )
            try:
                limit = max(3 * self.interval, SAMPLE_TIMEOUT_S)
                self.readings = await asyncio.wait_for(asyncio.shield(self._sample), limit)
            except asyncio.TimeoutError:
                # NVML hangs (a GPU falling off the bus does that): no reading means no device is idle,
                # and the other limits go on being enforced.
                self.log.error("gpuhub: NVML did not answer a sample within %.0f s", limit)
                self.readings = {}
            self._export(devices)
        activity = {uuid: culling.Activity(r.ok, r.activity if r.ok else None) for uuid, r in self.readings.items()}
        live = [lease for lease in self.leases() if lease.container is not None]
        if self.store is not None and live:
            self._write(self.store.seen, [lease.id for lease in live], now)
        try:
            budget_ends = await self._budget_ends(now) if self.watches else {}
        except Exception as e:  # the records' database is away: the other limits still apply
            self.log.warning("gpuhub: GPU-hour budgets not checked this time (%s)", e)
            budget_ends = {}
        stops = []
        # One pass with no await: every verdict is made on the same, current state.
        for owner, watch in list(self.watches.items()):
            try:
                verdict = self._judge(owner, watch, activity, now, budget_ends.get(owner))
            except Exception as e:  # one server's bad limit must not stop enforcement for the others
                self.log.error("gpuhub: %s: limits not checked (%s)", owner, e)
                continue
            if verdict.action == "stop":
                stops.append((owner, watch, verdict.notice))
        if stops:
            await asyncio.gather(*(self._stop(owner, watch, notice) for owner, watch, notice in stops))

    def _judge(self, owner: str, watch: culling.Watch, activity, now: float, budget_end) -> culling.Verdict:
        info = self.servers.get(owner)
        culling.observe(watch, activity, now)
        user, _, server = owner.partition("/")
        if watch.gpu_idle_since is not None:
            IDLE_SECONDS.labels(user, server).set(now - watch.gpu_idle_since)
        else:
            _remove_labels(IDLE_SECONDS, [(user, server)])
        verdict = culling.evaluate(watch, now, self.warning, info.last_activity() if info else None, budget_end)
        if verdict.action == "warn":
            WARNED.labels(verdict.notice.reason).inc()
            self.log.info("gpuhub: %s: warned: %s", owner, verdict.notice.message)
        elif verdict.action == "clear":
            self.log.info("gpuhub: %s: the stop warning no longer applies", owner)
        return verdict

    async def _stop(self, owner: str, watch: culling.Watch, notice: culling.Notice) -> None:
        if self.watches.get(owner) is not watch:  # stopped, or started again, while others were being stopped
            return
        if self.stop_server is None:
            watch.stopping = False
            return
        self._pending_stop[owner] = notice.reason
        self.log.warning("gpuhub: %s: stopping it: %s", owner, notice.detail)
        try:
            accepted = await self.stop_server(owner, notice.reason)
        except Exception as e:
            accepted = False
            self.log.warning("gpuhub: %s: the hub did not take the stop (%s); will try again", owner, e)
        if accepted:
            CULLED.labels(notice.reason).inc()
        else:
            if self._pending_stop.get(owner) == notice.reason:
                self._pending_stop.pop(owner, None)
            if self.watches.get(owner) is watch:
                watch.stopping = False  # try again at the next sample

    def _export(self, devices: Mapping[str, Device]) -> None:
        holders = {}
        for lease in self.leases():
            for uuid in lease.devices:
                holders[uuid] = lease.owner.partition("/")[::2] if lease.container else ("", "")
        seen: dict[Gauge, set[tuple]] = {g: set() for g in (ACTIVITY, UTILIZATION, MEMORY_USED, MEMORY_TOTAL)}
        seen[TELEMETRY_OK] = set()
        for uuid, r in self.readings.items():
            d = devices.get(uuid)
            if d is None:
                continue
            user, server = holders.get(uuid, ("", ""))
            labels = (uuid, d.model, d.mig_profile or "", user, server)
            TELEMETRY_OK.labels(*labels).set(1 if r.ok else 0)
            seen[TELEMETRY_OK].add(labels)
            if not r.ok:
                continue
            if r.activity is not None:
                ACTIVITY.labels(*labels, r.activity_source).set(r.activity)
                seen[ACTIVITY].add((*labels, r.activity_source))
            for gauge, value in (
                (UTILIZATION, r.utilization),
                (MEMORY_USED, r.memory_used),
                (MEMORY_TOTAL, r.memory_total),
            ):
                if value is not None:
                    gauge.labels(*labels).set(value)
                    seen[gauge].add(labels)
        for gauge, now_set in seen.items():
            _remove_labels(gauge, self._metric_labels.get(gauge, set()) - now_set)
            self._metric_labels[gauge] = now_set

    def device_status(self) -> list[dict]:
        """Every device with its holder and latest reading (the console and the CLI show this)."""
        holders = {uuid: lease for lease in self.leases() for uuid in lease.devices}
        out = []
        for uuid, d in self.devices().items():
            r = self.readings.get(uuid)
            lease = holders.get(uuid)
            out.append(
                {
                    "device": uuid,
                    "model": d.model,
                    "mig_profile": d.mig_profile,
                    "parent": d.parent,
                    "holder": lease.owner if lease else None,
                    "telemetry": None
                    if r is None
                    else {
                        "at": r.at,
                        "ok": r.ok,
                        "error": r.error or None,
                        "activity": r.activity,
                        "activity_source": r.activity_source or None,
                        "no_activity_reason": r.no_activity_reason or None,
                        "utilization": r.utilization,
                        "memory_used": r.memory_used,
                        "memory_total": r.memory_total,
                    },
                }
            )
        return out


def _remove_labels(gauge: Gauge, labelsets: Iterable[tuple]) -> None:
    for labels in labelsets:
        try:
            gauge.remove(*labels)
        except KeyError:
            pass


def hub_api_stopper(api_url: str, token: str, log: logging.Logger) -> StopServer:
    """Stop servers through the hub's REST API (DELETE), as jupyterhub-idle-culler does."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    async def stop(owner: str, reason: str) -> bool:
        user, _, server = owner.partition("/")
        path = (
            f"/users/{quote(user, safe='')}/servers/{quote(server, safe='')}"
            if server
            else f"/users/{quote(user, safe='')}/server"
        )
        request = HTTPRequest(
            api_url.rstrip("/") + path,
            method="DELETE",
            headers={"Authorization": f"token {token}"},
            request_timeout=30,
        )
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code in (202, 204):
            return True
        body = (response.body or b"").decode(errors="replace")
        try:
            body = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            pass
        log.warning("gpuhub: %s: the hub answered %s to the stop (%s)", owner, response.code, str(body)[:200])
        return False

    return stop
