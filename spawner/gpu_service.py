"""The hub's GPU service: one per hub process, shared by every spawner.

It owns the ledger of leases and talks to the container engine through the
narrow `Engine` seam. Its rules:

- **Admission in one step.** `reserve()` runs admission against the current
  usage and enters the result in the ledger in the same event-loop step.
- **Release only on the engine's word.** A lease ends, and its devices go back,
  only when the engine answers 404 for the lease's container, or after gpuhub
  itself force-removed that container. Errors and timeouts never free a device.
- **Quarantine what nobody accounts for.** Devices that a container uses but no
  lease accounts for (conflicts, devices missing from the inventory, partial
  holdings), devices NVML lost, and devices that failed several starts in a row
  are given to nobody until their cause is gone.
- **Orphans are stopped.** Hub-labelled containers that no spawner claims are
  removed after a grace period; their devices come back once they are gone.
- **The queue survives a restart.** It is written to a file; after a restart
  waiting servers keep their place for a while, and a student who starts again
  takes it back.

NVML and the engine run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from . import container, incidents
from .admission import Refusal, SpawnPlan, Usage
from .allocator import AllocationError, Lease, Ledger, Waiter
from .devices import Request
from .engine import ContainerView, Engine, EngineError
from .incidents import Incidents
from .inventory import Inventory
from .operations import Operations

DEVICES_TOTAL = Gauge("gpuhub_devices_total", "Allocatable GPU devices", ["model", "mig_profile"])
DEVICES_HELD = Gauge("gpuhub_devices_held", "GPU devices held by user servers", ["model", "mig_profile"])
DEVICES_QUARANTINED = Gauge(
    "gpuhub_devices_quarantined", "GPU devices given to nobody until their cause is gone", ["model", "mig_profile"]
)
QUEUE_LENGTH = Gauge("gpuhub_queue_length", "Servers waiting for GPU devices")
CONFLICTS = Counter("gpuhub_lease_conflicts", "Containers found using devices that another lease holds or gpuhub lacks")
ORPHANS_REMOVED = Counter("gpuhub_orphans_removed", "Hub-labelled containers no spawner claimed, removed")
OOM_KILLS = Counter("gpuhub_oom_kills", "Processes in user servers killed by the kernel for reaching the memory limit")
WAIT_SECONDS = Histogram(
    "gpuhub_gpu_wait_seconds",
    "Time servers waited for GPU devices",
    buckets=(0.1, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)

HEALTH = "health:"  # quarantine keys for device health, beside container ids
NODE = "node:"  # quarantine keys for a Swarm node that is down or takes no new servers


def owner_key(username: str, server_name: str) -> str:
    return f"{username}/{server_name}"


class ServiceBusy(Exception):
    """The engine did not confirm something the start needs (one line for the user)."""


class RemovedFromQueue(Exception):
    """A lab admin took this start out of the GPU queue: the start fails with this one line."""

    jupyterhub_message = "removed from the GPU queue by a lab admin"

    def __init__(self):
        super().__init__(self.jupyterhub_message)


class LiftRefused(Exception):
    """A quarantine a lab admin may not lift (or none): one line saying why."""


FAILED_STARTS = "failed "  # reason prefix of the one quarantine a lab admin may lift (see `liftable`)


@dataclass
class Ticket:
    """One admitted start: its plan and, for GPU profiles, its lease (now or after the queue)."""

    owner: str
    plan: SpawnPlan
    lease_id: str | None = None
    future: asyncio.Future | None = None  # resolved with the Lease while queued
    container: str | None = None  # the container this start created, once it exists
    device_failure: bool = False  # the start failed in a way that may be the device's fault


@dataclass
class _Restored:
    """A queue entry (or its grant) restored after a hub restart, kept until `until`."""

    until: float


@dataclass
class ServiceConfig:
    hub_id: str
    queue_file: str = ""
    reconcile_interval: float = 60
    rediscover_interval: float = 0
    orphan_grace: float = 300
    start_failures_to_quarantine: int = 3
    queue_resume_timeout: float = 300
    node_settle: float = 30  # a node back from Down is trusted after its tasks reported this long


class GPUService:
    def __init__(
        self,
        config: ServiceConfig,
        engine: Engine,
        load_inventory: Callable[[], Inventory],
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        ops: Callable[[GPUService], Operations] | None = None,
    ):
        self.config = config
        self.engine = engine
        self.started = time.time()  # a container that ended before this ended while the hub was down
        self.load_inventory = load_inventory
        self.log = log or logging.getLogger("gpuhub")
        self.clock = clock
        self.ledger: Ledger | None = None
        self.inventory: Inventory | None = None
        self._ready_lock = asyncio.Lock()
        self._futures: dict[str, asyncio.Future] = {}  # owner -> its waiting start
        self._starting: set[str] = set()  # owners between reserve and a running server
        self._aborting: dict[str, asyncio.Future] = {}  # owner -> the undo of its cancelled start
        self._restored: dict[str, _Restored] = {}
        self._claimed: dict[str, float] = {}  # container id -> when a spawner last said it is theirs
        self._first_seen: dict[str, float] = {}
        self._removed: OrderedDict[str, None] = OrderedDict()  # containers the engine confirmed gone
        self._removing: set[str] = set()
        self._failures: dict[str, int] = {}  # device -> failed starts in a row
        self._tasks: list[asyncio.Task] = []
        self._queue_dirty = asyncio.Event()
        self._end_reason: dict[str, str] = {}  # container id -> why it is going away (usage records)
        self.ended: dict[str, tuple[str, float, str]] = {}  # owner -> (end reason, when, words) of its last container
        self.nodes: dict = {}  # Swarm node id -> swarm.NodeView, as the manager said at the last look
        self._node_down_since: dict[str, float] = {}  # node id -> when it was first seen not taking servers
        self._node_back_since: dict[str, float] = {}  # node id -> when it was first seen ready again
        self.incidents = Incidents()  # processes OOM-killed in running servers, told to their users
        self._stop_watch: Callable[[], None] | None = None
        # Telemetry, usage records, budgets and culling; built with the service, started once it is ready.
        self.ops = ops(self) if ops else Operations(devices=self._devices, leases=self._leases, log=self.log)

    def _devices(self):
        return self.ledger.devices if self.ledger else {}

    def _leases(self):
        return list(self.ledger.leases.values()) if self.ledger else []

    # --- start-up ---------------------------------------------------------------------------
    async def ready(self) -> Ledger:
        """Load the inventory and rebuild the ledger from the engine, once."""
        if self.ledger is not None:
            return self.ledger
        async with self._ready_lock:
            if self.ledger is None:
                inventory = await asyncio.get_running_loop().run_in_executor(None, self.load_inventory)
                self._log_inventory(inventory)
                ledger = Ledger(inventory.devices)
                nodes = await self._read_nodes()
                listed = await self.engine.list(self._hub_labels())
                self.inventory, self.ledger = inventory, ledger
                self._quarantine_unhealthy(inventory)
                self._account(listed, "rebuilt from the engine")
                self._apply_nodes(nodes, rebuilt=True)
                self.ops.rebuilt({lease.id for lease in ledger.leases.values() if lease.container})
                self._restore_queue()
                self._wake(ledger.dispatch())
                self._start_background()
                self.ops.start()
                self._update_metrics()
        return self.ledger

    def _start_background(self) -> None:
        c = self.config
        if c.reconcile_interval > 0:
            self._tasks.append(asyncio.ensure_future(self._every(c.reconcile_interval, self.reconcile, "reconcile")))
        if c.rediscover_interval > 0:
            self._tasks.append(asyncio.ensure_future(self._every(c.rediscover_interval, self.rediscover, "rediscover")))
        if c.queue_file:
            self._tasks.append(asyncio.ensure_future(self._write_queue_forever()))
        watch_oom = getattr(self.engine, "watch_oom", None)
        if watch_oom is not None:
            loop = asyncio.get_running_loop()

            def on_kill(container_id: str, labels: Mapping[str, str], at: float) -> None:
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._oom(container_id, labels, at)))

            self._stop_watch = watch_oom(self._hub_labels(), on_kill)

    async def _oom(self, container_id: str, labels: Mapping[str, str], at: float) -> None:
        """The kernel killed a process in a server for memory: tell its user, with the limit."""
        view = ContainerView(id=container_id, labels=labels)
        try:
            view = await self.engine.inspect(container_id) or view
        except EngineError:
            pass  # the limit is unknown; the incident is still told
        owner = view.owner
        incident = self.incidents.oom(owner, view.memory_limit, at, container_id)
        self.log.warning("gpuhub: %s: %s", owner, incident.message)
        OOM_KILLS.inc()

    async def _every(self, interval: float, job: Callable, what: str) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception as e:
                self.log.warning("gpuhub: %s failed (%s); will retry in %.0f s", what, e, interval)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._stop_watch is not None:
            self._stop_watch()
        self.ops.close()

    # --- admission and reservation ------------------------------------------------------------
    def usage(self, username: str, besides: str = "") -> Usage:
        """Devices held or waited for by this user and per quota, except the owner `besides`."""
        prefix = owner_key(username, "")
        user = 0
        by_quota: dict[str, int] = {}
        for owner, count, charged in self._claims():
            if owner == besides:
                continue
            if owner.startswith(prefix):
                user += count
            by_quota[charged] = by_quota.get(charged, 0) + count
        return Usage(user, by_quota)

    def _claims(self):
        for lease in self.ledger.leases.values():
            yield lease.owner, len(lease.devices), lease.charged_to
        for w in self.ledger.waiting():
            yield w.owner, w.request.count, w.charged_to

    def usable(self, request: Request) -> int:
        """How many such devices one node can hand out at all (a lease never spans nodes). A Swarm
        node that is back and settling counts: its devices are free in seconds, so a start waits
        for them rather than being refused."""
        if self.ledger is None:
            return 0
        return self.ledger.largest(request, self._settling())

    def _settling(self) -> frozenset[str]:
        """Quarantine keys of Swarm nodes that are back and about to be trusted again."""
        return frozenset(NODE + node_id for node_id in self._node_back_since)

    def reserve(self, owner: str, username: str, admit: Callable[[Usage], SpawnPlan | Refusal]) -> Ticket | Refusal:
        """Decide and reserve in one step: no await between admission and the ledger entry."""
        ledger = self.ledger
        if owner in self._starting:
            return Refusal(409, "this server is already starting")
        self._expire_restored()
        restored = self._restored.pop(owner, None)
        outcome = admit(self.usage(username, besides=owner))
        if isinstance(outcome, Refusal):
            if restored:
                self._drop_restored(owner)
            return outcome
        ticket = Ticket(owner, outcome)
        if outcome.request is None:
            if restored:
                self._drop_restored(owner)
            self._starting.add(owner)
            return ticket
        lease, waiter = ledger.lease_of(owner), ledger.waiter(owner)
        if restored and lease is not None and lease.container is None and _fits(lease, outcome.request, ledger):
            ticket.lease_id = lease.id  # granted while the hub was restarting: take it
            ledger.recharge(lease.id, outcome.charged_to)  # counted where admission put it now
        elif restored and waiter is not None and waiter.request == outcome.request:
            # Keep the place held since before the restart, at the priority and quota decided now.
            ticket.lease_id = waiter.lease_id
            ticket.future = self._futures[owner] = asyncio.get_running_loop().create_future()
            self._wake(ledger.requeue(owner, outcome.priority, outcome.charged_to))
        else:
            if restored:
                self._drop_restored(owner)
            if ledger.lease_of(owner) is not None or ledger.waiter(owner) is not None:
                return Refusal(409, "your previous server still holds GPU devices; try again in a minute")
            try:
                granted = ledger.request(
                    owner,
                    outcome.request,
                    outcome.priority,
                    outcome.charged_to,
                    since=time.time(),
                    besides=self._settling(),
                )
            except AllocationError as e:
                return Refusal(400, str(e))
            finally:
                self._wake(ledger.granted_aside())
            if granted is not None:
                ticket.lease_id = granted.id
            else:
                ticket.lease_id = ledger.waiter(owner).lease_id
                ticket.future = self._futures[owner] = asyncio.get_running_loop().create_future()
        self._starting.add(owner)
        self._queue_changed()
        self._update_metrics()
        return ticket

    async def wait(self, ticket: Ticket, timeout: float) -> Lease | None:
        """The ticket's lease, once granted (raises TimeoutError after `timeout`). None for CPU servers."""
        if ticket.plan.request is None:
            return None
        if ticket.future is None:
            return self.ledger.leases[ticket.lease_id]
        started = self.clock()
        try:
            return await asyncio.wait_for(asyncio.shield(ticket.future), timeout)
        finally:
            WAIT_SECONDS.observe(self.clock() - started)

    def user_notice(self, owner: str, container_id: str):
        """What a running server's user is told: its stop warning (with `stop_at`), else what happened
        in it lately (an incident, with `at`), else None. The home page and JupyterLab's banner show it."""
        return self.ops.notice(owner) or self.incidents.current(owner, container_id)

    def bind(self, ticket: Ticket, container_id: str) -> None:
        """The start created its container: the lease is that container's from now on."""
        self._claimed[container_id] = self.clock()
        ticket.container = container_id
        if ticket.lease_id and ticket.lease_id in self.ledger.leases:
            self.ledger.bind(ticket.lease_id, container_id)
            self.ops.lease_bound(self.ledger.leases[ticket.lease_id], time.time(), ticket.plan.profile.slug)

    @contextlib.asynccontextmanager
    async def starting(self, ticket: Ticket) -> AsyncIterator[Ticket]:
        """Wrap a start: if it fails or is cancelled, undo everything it reserved or created.

        The undo is shielded from cancellation: a `docker start` still running in a
        thread must find its container force-removed before any device goes back.
        """
        try:
            yield ticket
        except asyncio.CancelledError:
            # JupyterHub gives a cancelled start (DELETE while pending) one second before it stops
            # the server, and fails the DELETE if the start is still pending then; a `docker rm`
            # takes longer. So the undo goes on in the background, and the owner counts as starting
            # (its devices held) until the engine confirms the container gone.
            self._count_failure(ticket)
            self._aborting[ticket.owner] = asyncio.ensure_future(self._abort_in_background(ticket))
            raise
        except BaseException:
            self._count_failure(ticket)
            await asyncio.shield(self.abort(ticket))
            raise
        else:
            self._count_success(ticket)
            if ticket.container:
                self.claim(ticket.container)  # running now; JupyterHub's polls claim it from here on
        finally:
            if ticket.owner not in self._aborting:
                self._starting.discard(ticket.owner)
            self._futures.pop(ticket.owner, None)

    async def _abort_in_background(self, ticket: Ticket) -> None:
        try:
            await self.abort(ticket)
        except Exception:
            self.log.exception("gpuhub: %s: undoing a cancelled start failed", ticket.owner)
        finally:
            self._aborting.pop(ticket.owner, None)
            self._starting.discard(ticket.owner)

    async def abort(self, ticket: Ticket) -> None:
        """Undo a start: leave the queue, or force-remove whatever container it made, then release."""
        ledger = self.ledger
        waiter = ledger.waiter(ticket.owner)
        if ticket.lease_id and waiter is not None and waiter.lease_id == ticket.lease_id:
            self._wake(ledger.cancel(ticket.owner))
            self._queue_changed()
            return
        lease = ledger.leases.get(ticket.lease_id) if ticket.lease_id else None
        made = {ticket.container} if ticket.container else set()
        try:
            if lease is not None:
                # A create still in flight when the start was cancelled is found by its lease label.
                labels = {**self._hub_labels(), container.LABEL_LEASE: lease.id}
                made |= {c.id for c in await self.engine.list(labels)}
                if lease.container:
                    made.add(lease.container)
            for cid in made:
                self._end_reason.setdefault(cid, "start-failed")
                await self._remove(cid)
        except EngineError as e:
            if lease is not None and lease.container is not None:
                self.log.error(
                    "gpuhub: %s: could not remove the container of a failed start (%s); its devices %s stay"
                    " held until the engine confirms it is gone",
                    ticket.owner,
                    e,
                    ",".join(lease.devices),
                )
                return
            # Never bound: no container of it ever ran. One created late is never started, and
            # reconcile accounts for it like any container nobody knows.
            self.log.warning("gpuhub: %s: could not look for a late container of a failed start (%s)", ticket.owner, e)
        if lease is not None and lease.id in ledger.leases and ledger.leases[lease.id].container is None:
            self._release(lease.id)

    async def clear_previous(self, owner: str, username: str, server: str) -> None:
        """Before a start: remove the owner's old container (a failed stop, an orphan), then free its lease."""
        labels = {**self._hub_labels(), container.LABEL_USER: username}
        try:
            old = [c for c in await self.engine.list(labels) if c.labels.get(container.LABEL_SERVER, "") == server]
            for c in old:
                self.log.warning("gpuhub: %s: removing its previous container %s before starting", owner, c.id[:12])
                await self._remove(c.id)
            lease = self.ledger.lease_of(owner)
            if lease is not None and lease.container is not None and owner not in self._restored:
                if await self.engine.inspect(lease.container) is None:
                    self._gone(lease.container)
                else:
                    await self._remove(lease.container)
        except EngineError as e:
            raise ServiceBusy(f"your previous server is still stopping ({e}); try again in a minute") from None
        lease = self.ledger.lease_of(owner)
        if (
            lease is not None
            and lease.container is None
            and owner not in self._restored
            and owner not in self._starting
        ):
            self._release(lease.id)  # a start that never made a container

    # --- what spawners report ------------------------------------------------------------------
    def claim(self, container_id: str) -> None:
        self._claimed[container_id] = self.clock()

    async def poll(self, owner: str, container_id: str) -> int | None:
        """None while the container runs or the engine does not answer; its exit status once it is gone."""
        self.claim(container_id)
        try:
            view = await self.engine.inspect(container_id)
        except EngineError as e:
            self.log.warning("gpuhub: %s: the engine did not answer about %s (%s)", owner, container_id[:12], e)
            return None
        if view is None:
            self.log.warning("gpuhub: %s: container %s is gone", owner, container_id[:12])
            self._gone(container_id)
            return 0
        if view.running or owner in self._starting:
            return None
        self.log.warning("gpuhub: %s: container %s is %s; removing it", owner, container_id[:12], view.state)
        self._exited(owner, container_id, view)
        try:
            await self._remove(container_id)
        except EngineError as e:
            self.log.warning(
                "gpuhub: %s: container %s stopped but is not removed yet (%s)", owner, container_id[:12], e
            )
        return view.exit_code

    def _exited(self, owner: str, container_id: str, view: ContainerView) -> None:
        """The container ended by itself: say why, for the usage records and the hub's page."""
        at = time.time()
        if view.oom_killed:
            reason, words = "oom-killed", f"it ran {incidents.out_of_memory(view.memory_limit)}"
        elif view.finished and view.finished < self.started:
            # It ended while this hub was not running: the host or Docker restarted (a reboot, a
            # dockerd restart without live-restore), not the user's code.
            reason, words, at = "host-restart", "the host or Docker restarted while it ran", view.finished
        elif view.exit_code:
            reason, words = "crashed", f"the server exited by itself with code {view.exit_code}"
        else:
            reason, words = "user", "the server was shut down from inside (File > Shut Down)"
        self._end_reason.setdefault(container_id, reason)
        self.ended[owner] = (reason, at, words)

    async def stop(self, owner: str, container_id: str, timeout: float, reason: str = "user") -> None:
        """Stop and remove the container; its devices go back once the engine confirms. Raises EngineError."""
        undoing = self._aborting.get(owner)
        if undoing is not None:
            await asyncio.shield(undoing)  # a cancelled start's undo removes every container it made
            if not container_id or await self.engine.inspect(container_id) is None:
                return
        self.claim(container_id)
        self._end_reason[container_id] = reason
        await self.engine.stop(container_id, timeout)
        await self._remove(container_id)

    # --- the engine's word -----------------------------------------------------------------------
    async def _remove(self, container_id: str) -> None:
        await self.engine.remove(container_id)
        self._gone(container_id)

    def _gone(self, container_id: str) -> None:
        reason = self._end_reason.pop(container_id, "lost")
        lease_id = self.ledger.by_container.get(container_id) if self.ledger is not None else None
        ended = self.ledger.leases.get(lease_id) if lease_id else None
        if ended is not None:
            self.ops.lease_ended(ended, reason)
        self._removed[container_id] = None
        while len(self._removed) > 10_000:
            self._removed.popitem(last=False)
        self._claimed.pop(container_id, None)
        self._first_seen.pop(container_id, None)
        if self.ledger is not None:
            self._wake(self.ledger.gone(container_id))
            self._update_metrics()

    def _release(self, lease_id: str) -> None:
        lease = self.ledger.leases.get(lease_id)
        if lease is not None and lease.container is not None:
            self.ops.lease_ended(lease, "lost")
        self._wake(self.ledger.release(lease_id))
        self._update_metrics()

    # --- reconcile: compare the ledger with the engine -------------------------------------------
    async def reconcile(self) -> None:
        ledger = self.ledger
        nodes = await self._read_nodes()
        listed = await self.engine.list(self._hub_labels())
        seen = {c.id for c in listed}
        unlisted = [cid for cid in list(ledger.by_container) + list(ledger.quarantine) if cid not in seen]
        gone = []
        for cid in unlisted:
            if cid.startswith((HEALTH, NODE)):
                continue
            if await self.engine.inspect(cid) is None:
                gone.append(cid)
        # From here on no await: the ledger cannot change under the decisions below.
        # Nodes first: a lease that ends below must not free devices on a node just seen down.
        self._apply_nodes(nodes)
        for cid in gone:
            self._gone(cid)
        for lease in list(ledger.leases.values()):
            # A lease with no container whose start is over and nobody resumes: nothing holds it.
            if lease.container is None and lease.owner not in self._starting and lease.owner not in self._restored:
                self.log.warning(
                    "gpuhub: released %s of %s: its start ended without a container", lease.devices, lease.owner
                )
                self._release(lease.id)
        self._account(listed, "reconciled with the engine")
        self._remove_orphans(listed)
        self._expire_restored()
        self._wake(ledger.dispatch())
        self._update_metrics()

    def _account(self, listed: list[ContainerView], what: str) -> None:
        """Make every device that a live container uses unavailable: a lease, or a quarantine."""
        ledger = self.ledger
        now = self.clock()
        # At a conflict the running container is the holder; among equals, the older one.
        for c in sorted(listed, key=lambda c: (not c.running, c.created, c.id)):
            if c.id in self._removed:
                continue  # listed before gpuhub removed it
            self._first_seen.setdefault(c.id, now)
            if not c.devices or not c.may_hold_devices:
                continue
            known = ledger.by_container.get(c.id)
            if known is not None:
                extra = [d for d in c.devices if d not in ledger.leases[known].devices]
                if extra and c.id not in ledger.quarantine:
                    self._conflict(c, extra, f"uses {','.join(extra)} beyond its lease", what)
                continue
            if c.id in ledger.quarantine:
                continue
            lease_id = c.labels.get(container.LABEL_LEASE, "")
            mine = ledger.leases.get(lease_id)
            if (
                mine is not None
                and mine.container is None
                and mine.owner == c.owner
                and set(c.devices) <= set(mine.devices)
            ):
                ledger.bind(lease_id, c.id)  # created, the start has not bound it yet
                self.ops.lease_bound(
                    ledger.leases[lease_id], _created(c.created), c.labels.get(container.LABEL_PROFILE, "")
                )
                continue
            try:
                lease = ledger.adopt(
                    c.owner, c.devices, c.id, lease_id or None, c.labels.get(container.LABEL_QUOTA, "")
                )
                self.ops.lease_bound(lease, _created(c.created), c.labels.get(container.LABEL_PROFILE, ""))
                self.log.info(
                    "gpuhub: %s: %s holds %s (container %s)", what, c.owner, ",".join(lease.devices), c.id[:12]
                )
            except AllocationError as e:
                self._conflict(c, c.devices, str(e), what)

    def _conflict(self, c: ContainerView, devices, reason: str, what: str) -> None:
        ledger = self.ledger
        holders = sorted(
            {ledger.leases[ledger.holder[d]].container or "(starting)" for d in devices if d in ledger.holder}
        )
        self.ledger.block(c.id, devices, f"container {c.id[:12]} of {c.owner}: {reason}")
        CONFLICTS.inc()
        self.log.error(
            "gpuhub: %s: CONFLICT: container %s of %s uses %s (%s); other holder(s): %s."
            " Quarantined until container %s is gone",
            what,
            c.id[:12],
            c.owner,
            ",".join(devices),
            reason,
            ", ".join(h[:12] for h in holders) or "none",
            c.id[:12],
        )

    def _remove_orphans(self, listed: list[ContainerView]) -> None:
        grace = self.config.orphan_grace
        if grace <= 0:
            return
        now = self.clock()
        for c in listed:
            if c.id in self._removed or c.id in self._removing or c.owner in self._starting:
                continue  # a start in progress is not polled yet, but is claimed by its spawner
            since = max(self._first_seen.get(c.id, now), self._claimed.get(c.id, 0))
            if now - since >= grace:
                self._removing.add(c.id)
                self._tasks = [t for t in self._tasks if not t.done()]
                self._tasks.append(asyncio.ensure_future(self._remove_orphan(c)))

    async def _remove_orphan(self, c: ContainerView) -> None:
        self._end_reason.setdefault(c.id, "orphan-removed")
        try:
            await self._remove(c.id)
            ORPHANS_REMOVED.inc()
            self.log.warning(
                "gpuhub: removed orphan container %s of %s (unclaimed for %.0f s); devices %s are free again",
                c.id[:12],
                c.owner,
                self.config.orphan_grace,
                ",".join(c.devices) or "none",
            )
        except EngineError as e:
            self.log.warning("gpuhub: could not remove orphan container %s (%s); will retry", c.id[:12], e)
        finally:
            self._removing.discard(c.id)

    # --- Swarm nodes: a node that is down makes its leases stale -------------------------------------
    async def _read_nodes(self) -> dict | None:
        """The manager's nodes by id; None on a single host (its engine has no nodes)."""
        read = getattr(self.engine, "nodes", None)
        if read is None:
            return None
        return {n.id: n for n in await read()}

    async def refresh_nodes(self) -> None:
        """Read the nodes now, not at the next reconcile: a node an admin just paused or drained
        must not get the next server (its task would wait for a node that takes none)."""
        if self.ledger is None:
            return
        nodes = await self._read_nodes()
        self._apply_nodes(nodes)

    def node_refusal(self, node_id: str) -> str:
        """Why this node takes no new servers now ("node node3 is down"), or "" if it does."""
        view = self.nodes.get(node_id)
        if view is None:
            return f"node {node_id[:12]} is gone from the swarm" if self.nodes else ""
        return "" if view.takes_servers else f"node {view.name} {_node_state(view)}"

    def _apply_nodes(self, nodes: dict | None, rebuilt: bool = False) -> None:
        """Block the devices of nodes that take no servers; unblock a node once it has been back a while.

        Leases on a node that went down are *stale*: they stay in the ledger, and their devices go to
        nobody, until the node returns and the manager has heard from it for `node_settle` seconds
        (so its tasks' states are its own again, and reconcile has checked them) or a lab admin
        releases them. A lease whose service was removed meanwhile ends; its devices stay blocked
        with the node until then, because its container may still run there.
        """
        if nodes is None:
            return
        self.nodes = nodes
        ledger = self.ledger
        now = self.clock()
        for node_id, uuids in ledger.nodes().items():
            if not node_id:
                continue
            key = NODE + node_id
            view = nodes.get(node_id)
            if view is not None and view.takes_servers:
                self._node_down_since.pop(node_id, None)
                if key not in ledger.quarantine:
                    continue
                back = self._node_back_since.setdefault(node_id, now)
                if rebuilt or now - back >= self.config.node_settle:
                    ledger.lift_quietly(key)
                    self._node_back_since.pop(node_id, None)
                    self.log.warning("gpuhub: node %s is back and checked; its devices are in use again", view.name)
                continue
            self._node_back_since.pop(node_id, None)
            since = self._node_down_since.setdefault(node_id, time.time())
            what = "is gone from the swarm" if view is None else _node_state(view)
            name = view.name if view is not None else node_id[:12]
            reason = f"node {name} {what} (since {time.strftime('%H:%M:%S', time.gmtime(since))} UTC)"
            stale = [ledger.leases[ledger.holder[u]].owner for u in uuids if u in ledger.holder]
            if key not in ledger.quarantine or ledger.quarantine[key][1] != reason:
                ledger.block(key, uuids, reason)
                self.log.error(
                    "gpuhub: %s: its devices go to nobody; stale leases (kept, not reissued): %s",
                    reason,
                    ", ".join(sorted(set(stale))) or "none",
                )

    def stale(self, owner: str) -> bool:
        """Whether this owner's lease is on a node that is down (kept, not trusted, not reissued)."""
        lease = self.ledger.lease_of(owner) if self.ledger else None
        if lease is None:
            return False
        return any(k.startswith(NODE) for u in lease.devices for k in self.ledger.blocked_by(u))

    async def release_node(self, node_id: str) -> list[str]:
        """A lab admin says a down node's servers are gone for good: remove their services (the
        manager forgets them; the node's agent stops their containers if it ever returns), end
        their leases and give the node's devices out again. Returns the owners released."""
        key = NODE + node_id
        ledger = self.ledger
        if key not in ledger.quarantine:
            raise LiftRefused(f"node {node_id[:12]} is not marked down")
        released = []
        for lease in [ledger.leases[ledger.holder[u]] for u in ledger.nodes().get(node_id, []) if u in ledger.holder]:
            if lease.id not in ledger.leases:
                continue
            if lease.container:
                self._end_reason[lease.container] = "admin"
                with contextlib.suppress(EngineError):
                    await self.engine.remove(lease.container)
                self._gone(lease.container)
            else:
                self._release(lease.id)
            released.append(lease.owner)
        view = self.nodes.get(node_id)
        if view is not None and view.takes_servers:
            self._wake(ledger.lift(key))
            self._node_down_since.pop(node_id, None)
        # Still down: its devices stay blocked (nothing could run there), its leases are over.
        self._update_metrics()
        self.log.warning(
            "gpuhub: node %s released by a lab admin; leases ended: %s", node_id[:12], ", ".join(released) or "none"
        )
        return released

    # --- inventory health --------------------------------------------------------------------------
    async def rediscover(self) -> None:
        """Read the inventory again (in a thread): quarantine lost or unhealthy devices, lift recovered ones."""
        inventory = await asyncio.get_running_loop().run_in_executor(None, self.load_inventory)
        if inventory.source != "nvml":
            # Static inventories do not change; and NVML failing as a whole (a driver upgrade
            # in progress) says nothing about any one GPU: keep the last answer.
            if inventory.source == "none":
                self.log.warning("gpuhub: NVML re-discovery failed (%s); keeping the last inventory", inventory.note)
            return
        self._quarantine_unhealthy(inventory)
        self._wake(self.ledger.dispatch())
        self._update_metrics()

    def _quarantine_unhealthy(self, inventory: Inventory) -> None:
        ledger = self.ledger
        present = {d.uuid for d in inventory.devices}
        unhealthy = dict(getattr(inventory, "unhealthy", {}) or {})
        for uuid in ledger.devices:
            key = HEALTH + uuid
            if uuid in unhealthy or uuid not in present:
                reason = unhealthy.get(uuid) or "lost: NVML no longer lists it"
                if key not in ledger.quarantine or ledger.quarantine[key][1] != reason:
                    self.log.error("gpuhub: GPU device %s quarantined: %s", uuid, reason)
                    ledger.block(key, [uuid], reason)
            elif key in ledger.quarantine and not ledger.quarantine[key][1].startswith(FAILED_STARTS):
                self.log.warning("gpuhub: GPU device %s is back; quarantine lifted", uuid)
                ledger.lift_quietly(key)
        new = present - set(ledger.devices)
        if new:
            self.log.warning("gpuhub: new GPU device(s) %s: restart the hub to hand them out", ",".join(sorted(new)))

    def _count_failure(self, ticket: Ticket) -> None:
        lease = self.ledger.leases.get(ticket.lease_id or "")
        if lease is None or not ticket.device_failure:
            return
        for uuid in lease.devices:
            n = self._failures[uuid] = self._failures.get(uuid, 0) + 1
            if n >= self.config.start_failures_to_quarantine:
                reason = f"{FAILED_STARTS}{n} starts in a row"
                self.log.error("gpuhub: GPU device %s quarantined: %s", uuid, reason)
                self.ledger.block(HEALTH + uuid, [uuid], reason)

    def _count_success(self, ticket: Ticket) -> None:
        lease = self.ledger.leases.get(ticket.lease_id or "")
        for uuid in lease.devices if lease else ():
            self._failures.pop(uuid, None)

    # --- waking waiters ---------------------------------------------------------------------------
    def _wake(self, grants: list[Lease]) -> None:
        for lease in grants:
            future = self._futures.pop(lease.owner, None)
            if future is not None and not future.done():
                future.set_result(lease)
            elif lease.owner in self._restored:
                self.log.info("gpuhub: %s granted %s; kept for them to start again", lease.owner, lease.devices)
            else:  # nobody waits for it any more
                self._wake(self.ledger.release(lease.id))
        if grants:
            self._queue_changed()

    # --- the queue on disk ---------------------------------------------------------------------------
    def _queue_changed(self) -> None:
        self._queue_dirty.set()
        if self.ledger is not None:
            QUEUE_LENGTH.set(len(self.ledger.waiting()))

    def queue_snapshot(self) -> dict:
        ledger = self.ledger
        entries = [
            {
                "lease": w.lease_id,
                "owner": w.owner,
                "count": w.request.count,
                "mig_profile": w.request.mig_profile,
                "model": w.request.model,
                "priority": w.priority,
                "arrival": w.arrival,
                "charged_to": w.charged_to,
                "since": w.since,
            }
            for w in ledger.waiting()
        ]
        return {"version": 1, "hub": self.config.hub_id, "queue": entries}

    async def _write_queue_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._queue_dirty.wait()
            self._queue_dirty.clear()
            data = json.dumps(self.queue_snapshot())
            try:
                await loop.run_in_executor(None, _write_atomically, self.config.queue_file, data)
            except OSError as e:
                self.log.warning("gpuhub: could not save the GPU queue to %s (%s)", self.config.queue_file, e)
            await asyncio.sleep(0.2)  # coalesce a storm of changes into few writes

    def _restore_queue(self) -> None:
        path = self.config.queue_file
        if not path or not os.path.exists(path):
            return
        try:
            with open(path) as f:
                data = json.load(f)
            entries = sorted(data.get("queue", []), key=lambda e: e["arrival"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            self.log.error("gpuhub: the saved GPU queue %s is unreadable (%s); starting with an empty queue", path, e)
            return
        until = self.clock() + self.config.queue_resume_timeout
        restored = 0
        for e in entries:
            owner = str(e.get("owner", ""))
            try:
                request = Request(int(e["count"]), e.get("mig_profile"), e.get("model"))
                self.ledger.request(
                    owner,
                    request,
                    int(e.get("priority", 0)),
                    str(e.get("charged_to", "")),
                    e.get("lease"),
                    e["arrival"],
                    float(e.get("since") or time.time()),
                )
            except (AllocationError, ValueError, KeyError, TypeError) as err:
                self.log.warning("gpuhub: saved queue entry of %s not restored: %s", owner, err)
                continue
            self._restored[owner] = _Restored(until)
            restored += 1
        self._wake(self.ledger.granted_aside())
        if restored:
            self._queue_changed()
            self.log.info(
                "gpuhub: restored %d waiting server(s) in their queue order; each keeps its place for %.0f s",
                restored,
                self.config.queue_resume_timeout,
            )

    def _expire_restored(self) -> None:
        now = self.clock()
        for owner, r in list(self._restored.items()):
            if now >= r.until:
                self.log.info("gpuhub: %s did not start again after the restart; their queue place is given up", owner)
                del self._restored[owner]
                self._drop_restored(owner)

    def _drop_restored(self, owner: str) -> None:
        ledger = self.ledger
        self._restored.pop(owner, None)
        lease = ledger.lease_of(owner)
        if lease is not None and lease.container is None and owner not in self._starting:
            self._wake(ledger.release(lease.id))
        elif ledger.waiter(owner) is not None:
            self._wake(ledger.cancel(owner))
        self._queue_changed()

    # --- lab admins' actions -----------------------------------------------------------------------
    def remove_waiter(self, owner: str) -> Waiter | None:
        """Take `owner` out of the queue: its start fails with `RemovedFromQueue`. None if it does not wait."""
        ledger = self.ledger
        waiter = ledger.waiter(owner) if ledger else None
        if waiter is None:
            return None
        future = self._futures.pop(owner, None)
        if future is not None and not future.done():
            future.set_exception(RemovedFromQueue())
        self._restored.pop(owner, None)  # a place kept over a restart is given up too
        self._wake(ledger.cancel(owner))
        self._queue_changed()
        self._update_metrics()
        self.log.warning("gpuhub: %s was removed from the GPU queue by a lab admin", owner)
        return waiter

    def liftable(self, uuid: str) -> bool:
        """May a lab admin lift this device's quarantine? Only one for failed starts: NVML's health
        checks and the engine's word about unknown containers lift themselves once their cause is gone."""
        blocked = self.ledger.blocked_by(uuid) if self.ledger else {}
        return bool(blocked) and all(
            (key == HEALTH + uuid and reason.startswith(FAILED_STARTS)) or key.startswith(NODE)
            for key, reason in blocked.items()
        )

    async def lift_device(self, uuid: str) -> list[str]:
        """A lab admin's lift: a down node's devices (its stale leases end), then a failed-starts quarantine."""
        blocked = self.ledger.blocked_by(uuid)
        if blocked and self.liftable(uuid):
            for key in [k for k in blocked if k.startswith(NODE)]:
                await self.release_node(key[len(NODE) :])
            if any(k.startswith(HEALTH) for k in self.ledger.blocked_by(uuid)):
                self.lift(uuid)
            return list(blocked.values())
        return self.lift(uuid)

    def lift(self, uuid: str) -> list[str]:
        """Lift a liftable quarantine (a lab admin fixed its cause); the reasons lifted. Raises LiftRefused."""
        blocked = self.ledger.blocked_by(uuid)
        if not blocked:
            raise LiftRefused(f"device {uuid} is not quarantined")
        if not self.liftable(uuid):
            reasons = "; ".join(r for k, r in blocked.items() if not r.startswith(FAILED_STARTS) or k != HEALTH + uuid)
            raise LiftRefused(f"device {uuid} cannot be lifted by hand: {reasons}")
        self._failures.pop(uuid, None)
        self._wake(self.ledger.lift(HEALTH + uuid))
        self._update_metrics()
        self.log.warning(
            "gpuhub: GPU device %s: quarantine lifted by a lab admin (%s)", uuid, "; ".join(blocked.values())
        )
        return list(blocked.values())

    # --- questions ------------------------------------------------------------------------------------
    def position(self, owner: str) -> tuple[int, int] | None:
        return self.ledger.position(owner) if self.ledger else None

    def availability(self, request: Request) -> tuple[int, int]:
        """(free, total usable) devices of the kind `request` asks for."""
        return len(self.ledger.free(request)), self.ledger.usable(request)

    def waiting_for(self, request: Request) -> int:
        """Servers queued for the kind of device `request` asks for (the spawn form's queue hint)."""
        return self.ledger.waiting_for(request) if self.ledger else 0

    def _hub_labels(self) -> dict[str, str]:
        return {container.LABEL_HUB: self.config.hub_id}

    def _log_inventory(self, inventory: Inventory) -> None:
        if inventory.note:
            self.log.warning("gpuhub: %s", inventory.note)
        self.log.info(
            "gpuhub: %d allocatable GPU device(s) from %s: %s",
            len(inventory.devices),
            inventory.source,
            ", ".join(f"{d.uuid} ({d.kind})" for d in inventory.devices) or "none",
        )

    def _update_metrics(self) -> None:
        ledger = self.ledger
        if ledger is None:
            return
        totals: dict[tuple[str, str], list[int]] = {}
        for d in ledger.devices.values():
            row = totals.setdefault((d.model, d.mig_profile or ""), [0, 0, 0])
            row[0] += 1
            row[1] += d.uuid in ledger.holder
            row[2] += bool(ledger.quarantined(d.uuid))
        for key, (total, held, blocked) in totals.items():
            DEVICES_TOTAL.labels(*key).set(total)
            DEVICES_HELD.labels(*key).set(held)
            DEVICES_QUARANTINED.labels(*key).set(blocked)
        QUEUE_LENGTH.set(len(ledger.waiting()))


def _node_state(view) -> str:
    if view.state != "ready":
        return f"is {view.state}"
    return f"is set to {view.availability} (no new servers)"


def _created(text: str) -> float:
    """Docker's creation time ("2026-11-26T10:00:00.123456789Z") as epoch seconds; now if unreadable."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return time.time()


def _fits(lease: Lease, request: Request, ledger: Ledger) -> bool:
    return len(lease.devices) == request.count and all(request.accepts(ledger.devices[d]) for d in lease.devices)


def _write_atomically(path: str, data: str) -> None:
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
