"""The hub's GPU broker: one ledger per hub process, shared by every spawner.

Glue between the pure `Ledger` and the asyncio world: waiters sleep on futures
until `release()`/`reconcile()` hands them devices; holdings are rebuilt from
Docker (container labels and DeviceRequests) when the hub starts and compared
with Docker periodically. NVML and Docker run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from docker import errors as docker_errors
from prometheus_client import Gauge, Histogram

from . import container
from .allocator import Grant, Ledger
from .devices import Request
from .inventory import Inventory

DEVICES_TOTAL = Gauge("gpuhub_devices_total", "Allocatable GPU devices", ["model", "mig_profile"])
DEVICES_HELD = Gauge("gpuhub_devices_held", "GPU devices held by user servers", ["model", "mig_profile"])
QUEUE_LENGTH = Gauge("gpuhub_queue_length", "Servers waiting for GPU devices")
WAIT_SECONDS = Histogram(
    "gpuhub_gpu_wait_seconds",
    "Time servers waited for GPU devices",
    buckets=(0.1, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)

DockerCall = Callable[..., Awaitable[Any]]


def owner_key(username: str, server_name: str) -> str:
    return f"{username}/{server_name}"


class Broker:
    _by_hub: dict[str, Broker] = {}

    @classmethod
    def shared(cls, hub_id: str) -> Broker:
        broker = cls._by_hub.get(hub_id)
        if broker is None:
            broker = cls._by_hub[hub_id] = cls(hub_id)
        return broker

    def __init__(self, hub_id: str, log: logging.Logger | None = None):
        self.hub_id = hub_id
        self.log = log or logging.getLogger("gpuhub")
        self.ledger: Ledger | None = None
        self.inventory: Inventory | None = None
        self.charged: dict[str, str] = {}  # owner -> quota source its devices count against
        self.starting: set[str] = set()  # owners whose container may not run yet
        self._waiters: dict[str, asyncio.Future] = {}
        self._lock = asyncio.Lock()
        self._reconciler: asyncio.Task | None = None

    # --- start-up ---------------------------------------------------------------------------
    async def ensure_ready(
        self, load_inventory: Callable[[], Inventory], docker: DockerCall, reconcile_interval: float
    ) -> Ledger:
        if self.ledger is not None:
            return self.ledger
        async with self._lock:
            if self.ledger is None:
                inventory = await asyncio.get_running_loop().run_in_executor(None, load_inventory)
                if inventory.note:
                    self.log.warning("gpuhub: %s", inventory.note)
                self.log.info(
                    "gpuhub: %d allocatable GPU device(s) from %s: %s",
                    len(inventory.devices),
                    inventory.source,
                    ", ".join(f"{d.uuid} ({d.kind})" for d in inventory.devices) or "none",
                )
                ledger = Ledger(inventory.devices)
                live, charged = await self._live(docker)
                report = ledger.rebuild(live)
                self._log_report(report, "rebuilt from Docker")
                self.charged = {o: charged[o] for o in ledger.holdings if o in charged}
                self.inventory, self.ledger = inventory, ledger
                self._update_metrics()
                if reconcile_interval > 0:
                    self._reconciler = asyncio.ensure_future(self._reconcile_forever(docker, reconcile_interval))
        return self.ledger

    async def _live(self, docker: DockerCall) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        """Devices held by this hub's running containers, from Docker alone."""
        holdings: dict[str, tuple[str, ...]] = {}
        charged: dict[str, str] = {}
        found = await docker("containers", filters={"label": f"{container.LABEL_HUB}={self.hub_id}"})
        for summary in found:
            try:
                info = await docker("inspect_container", summary["Id"])
            except docker_errors.NotFound:
                continue  # removed since it was listed
            labels = info["Config"].get("Labels") or {}
            devices = [d for d in labels.get(container.LABEL_DEVICES, "").split(",") if d]
            for req in info["HostConfig"].get("DeviceRequests") or []:
                devices += [d for d in req.get("DeviceIDs") or [] if d not in devices]
            if not devices or not info["State"].get("Running"):
                continue
            owner = owner_key(labels.get(container.LABEL_USER, ""), labels.get(container.LABEL_SERVER, ""))
            holdings[owner] = tuple(devices)
            charged[owner] = labels.get(container.LABEL_QUOTA, "")
        return holdings, charged

    async def _reconcile_forever(self, docker: DockerCall, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile(docker)
            except Exception:
                self.log.exception("gpuhub: reconciling GPU holdings with Docker failed; will retry")

    async def reconcile(self, docker: DockerCall) -> None:
        ledger = self.ledger
        # Only holdings that existed, and were not starting, before Docker was asked can be
        # stale: a server may finish starting (or be granted) while the listing runs.
        candidates = {o for o in ledger.holdings if o not in self.starting}
        live, charged = await self._live(docker)
        for owner, devices in ledger.holdings.items():
            if owner not in candidates or owner in self.starting:
                live.setdefault(owner, devices)
        report = ledger.reconcile(live)
        for owner in report.released:
            self.charged.pop(owner, None)
        for owner in report.adopted:
            self.charged[owner] = charged.get(owner, "")
        self._log_report(report, "reconciled with Docker")
        self._wake(ledger.dispatch())

    def _log_report(self, report, what: str) -> None:
        for owner, devices in report.released.items():
            self.log.warning("gpuhub: %s: released %s of %s, whose container is gone", what, devices, owner)
        for owner, devices in report.adopted.items():
            self.log.info("gpuhub: %s: %s holds %s", what, owner, ",".join(devices))
        for owner, devices in report.conflicts.items():
            self.log.error(
                "gpuhub: %s: container of %s holds %s, which another container holds or the inventory lacks;"
                " not adopted",
                what,
                owner,
                ",".join(devices),
            )

    # --- grants -----------------------------------------------------------------------------
    async def acquire(self, owner: str, request: Request, priority: int, timeout: float, charged_to: str) -> Grant:
        """Devices for `owner`, at once or after waiting in the queue (raises TimeoutError)."""
        ledger = self.ledger
        if owner in ledger.holdings:
            # A server that is starting holds nothing yet; anything left is stale.
            self.release(owner)
        self.starting.add(owner)
        self.charged[owner] = charged_to  # queued requests count against quotas too
        grant = ledger.request(owner, request, priority)
        if grant is None:
            future = asyncio.get_running_loop().create_future()
            self._waiters[owner] = future
            self._update_metrics()
            started = time.monotonic()
            try:
                grant = await asyncio.wait_for(asyncio.shield(future), timeout)
            except BaseException:
                self._waiters.pop(owner, None)
                self.release(owner)  # leaves the queue; gives back a grant that raced the timeout
                raise
            finally:
                WAIT_SECONDS.observe(time.monotonic() - started)
        self.charged[owner] = charged_to
        self._update_metrics()
        return grant

    def started(self, owner: str) -> None:
        self.starting.discard(owner)

    def release(self, owner: str) -> None:
        self.starting.discard(owner)
        self.charged.pop(owner, None)
        if self.ledger is not None:
            self._wake(self.ledger.release(owner))
            self._update_metrics()

    def _wake(self, grants: list[Grant]) -> None:
        for grant in grants:
            future = self._waiters.pop(grant.owner, None)
            if future is not None and not future.done():
                future.set_result(grant)
            else:  # nobody waits for it any more
                self._wake(self.ledger.release(grant.owner))
        if grants:
            self._update_metrics()

    # --- questions --------------------------------------------------------------------------
    def position(self, owner: str) -> tuple[int, int] | None:
        return self.ledger.position(owner) if self.ledger else None

    def _claims(self, besides: str = "") -> dict[str, int]:
        """Devices each owner holds or waits for."""
        claims = {o: len(d) for o, d in self.ledger.holdings.items()}
        for owner, request in self.ledger.waiting():
            claims[owner] = request.count
        claims.pop(besides, None)
        return claims

    def held_by_user(self, username: str, besides: str = "") -> int:
        prefix = owner_key(username, "")
        return sum(n for o, n in self._claims(besides).items() if o.startswith(prefix))

    def held_by_quota(self, besides: str = "") -> dict[str, int]:
        usage: dict[str, int] = {}
        for owner, n in self._claims(besides).items():
            source = self.charged.get(owner, "")
            usage[source] = usage.get(source, 0) + n
        return usage

    def availability(self, request: Request) -> tuple[int, int]:
        """(free, total) devices of the kind `request` asks for."""
        return len(self.ledger.free(request)), self.ledger.total(request)

    def _update_metrics(self) -> None:
        ledger = self.ledger
        if ledger is None:
            return
        totals: dict[tuple[str, str], int] = {}
        held: dict[tuple[str, str], int] = {}
        for d in ledger.devices.values():
            key = (d.model, d.mig_profile or "")
            totals[key] = totals.get(key, 0) + 1
            held[key] = held.get(key, 0) + (d.uuid in ledger.holder)
        for key, n in totals.items():
            DEVICES_TOTAL.labels(*key).set(n)
            DEVICES_HELD.labels(*key).set(held[key])
        QUEUE_LENGTH.set(len(ledger.waiting()))
