"""The ledger of who holds which device, and the wait queue. Pure: no Docker, no NVML.

A server (its *owner* key, e.g. "alice/" or "alice/big") asks for a Request.
`Ledger.request()` either grants exact device UUIDs at once or puts the owner in
the queue; `release()` and `cancel()` give devices back and hand them to waiters.

Queue order is (priority, arrival): a higher priority goes first, equal
priorities are first come, first served. A waiter that cannot be served yet
*reserves* the free devices it could use, so later arrivals asking for the same
kind cannot overtake it (a 2-GPU request is not starved by a stream of 1-GPU
ones); later arrivals asking for other kinds go ahead on other devices.
Multi-device requests are all-or-nothing.

Docker is the truth about holdings: `rebuild()` loads them from container labels
at hub start, `reconcile()` compares the ledger with what runs now.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .devices import Device, Request


class AllocationError(ValueError):
    """A request that can never be served, or an inconsistent ledger operation."""


@dataclass(frozen=True)
class Grant:
    owner: str
    devices: tuple[str, ...]


@dataclass(order=True)
class _Waiter:
    sort_key: tuple[int, int]
    owner: str = field(compare=False)
    request: Request = field(compare=False)


@dataclass(frozen=True)
class ReconcileReport:
    released: dict[str, tuple[str, ...]]  # owners whose containers are gone
    adopted: dict[str, tuple[str, ...]]  # holdings found in Docker that the ledger did not know
    conflicts: dict[str, tuple[str, ...]]  # devices claimed by two live containers (never granted so)


class Ledger:
    def __init__(self, devices: Iterable[Device]):
        self.devices: dict[str, Device] = {}
        for d in devices:
            if d.uuid in self.devices:
                raise AllocationError(f"device {d.uuid} is listed twice")
            self.devices[d.uuid] = d
        # Devices are grouped in pools of one kind (a MIG profile, or a GPU model);
        # each pool keeps its free devices sorted, so a decision touches few of them.
        self._order = {d.uuid: (d.parent or d.uuid, d.index, d.uuid) for d in self.devices.values()}
        self._pools: dict[str, list[Device]] = {}
        for d in sorted(self.devices.values(), key=lambda d: self._order[d.uuid]):
            self._pools.setdefault(_pool(d), []).append(d)
        self._free: dict[str, list[tuple]] = {p: [self._order[d.uuid] for d in ds] for p, ds in self._pools.items()}
        self._pools_of: dict[Request, tuple[str, ...]] = {}
        self.holder: dict[str, str] = {}  # device uuid -> owner
        self.holdings: dict[str, tuple[str, ...]] = {}  # owner -> device uuids
        self._waiters: list[_Waiter] = []  # kept sorted
        self._waiting: dict[str, _Waiter] = {}
        self._arrival = itertools.count()

    # --- questions ---------------------------------------------------------------------------
    def free(self, request: Request | None = None) -> list[Device]:
        pools = self._pools if request is None else self.pools_for(request)
        return sorted(
            (self.devices[key[2]] for p in pools for key in self._free[p]),
            key=lambda d: self._order[d.uuid],
        )

    def total(self, request: Request) -> int:
        return sum(len(self._pools[p]) for p in self.pools_for(request))

    def satisfiable(self, request: Request) -> bool:
        """Could this request ever be served on this inventory?"""
        return self.total(request) >= request.count

    def pools_for(self, request: Request) -> tuple[str, ...]:
        pools = self._pools_of.get(request)
        if pools is None:
            pools = tuple(p for p, ds in self._pools.items() if request.accepts(ds[0]))
            self._pools_of[request] = pools
        return pools

    def waiting(self) -> list[tuple[str, Request]]:
        return [(w.owner, w.request) for w in self._waiters]

    def position(self, owner: str) -> tuple[int, int] | None:
        """(1-based position, queue length) among waiters competing for the same kind of device."""
        me = self._waiting.get(owner)
        if me is None:
            return None
        mine = set(self.pools_for(me.request))
        same = [w for w in self._waiters if mine.intersection(self.pools_for(w.request))]
        return same.index(me) + 1, len(same)

    # --- changes -----------------------------------------------------------------------------
    def request(self, owner: str, request: Request, priority: int = 0) -> Grant | None:
        """Grant at once, or queue `owner` and return None. Idempotent for an owner already holding."""
        if owner in self.holdings:
            return Grant(owner, self.holdings[owner])
        if not self.satisfiable(request):
            raise AllocationError(
                f"{request.label} can never be served: this host has {self.total(request)} such device(s)"
            )
        if owner in self._waiting:
            return None
        waiter = _Waiter((-priority, next(self._arrival)), owner, request)
        bisect.insort(self._waiters, waiter)
        self._waiting[owner] = waiter
        for grant in self.dispatch():
            if grant.owner == owner:
                return grant
        return None

    def cancel(self, owner: str) -> list[Grant]:
        """Leave the queue (the user gave up). Returns grants this made possible for others."""
        if self._unqueue(owner):
            return self.dispatch()
        return []

    def release(self, owner: str) -> list[Grant]:
        """Give back the owner's devices (and leave the queue). Returns the grants to waiters."""
        self._unqueue(owner)
        self._drop(owner)
        return self.dispatch()

    def dispatch(self) -> list[Grant]:
        """Serve waiters in queue order; blocked waiters reserve what they could use."""
        available = {p: len(f) for p, f in self._free.items() if f}
        remaining = sum(available.values())
        granted: list[Grant] = []
        for waiter in self._waiters:
            if remaining == 0:
                break
            pools = [p for p in self.pools_for(waiter.request) if available.get(p)]
            usable = sum(available[p] for p in pools)
            if usable >= waiter.request.count:
                chosen = self._take(pools, waiter.request.count)
                for uuid in chosen:
                    available[_pool(self.devices[uuid])] -= 1
                remaining -= len(chosen)
                self._hold(waiter.owner, chosen)
                granted.append(Grant(waiter.owner, chosen))
            else:
                for p in pools:  # reserve: later arrivals may not take these
                    remaining -= available.pop(p)
        if granted:
            served = {g.owner for g in granted}
            self._waiters = [w for w in self._waiters if w.owner not in served]
            for owner in served:
                self._waiting.pop(owner, None)
        return granted

    def adopt(self, owner: str, devices: Iterable[str]) -> None:
        """Record a holding that exists in Docker (hub restart). Refuses double holding."""
        devices = tuple(devices)
        for uuid in devices:
            if uuid not in self.devices:
                raise AllocationError(f"device {uuid} held by {owner} is not in the inventory")
            other = self.holder.get(uuid)
            if other is not None and other != owner:
                raise AllocationError(f"device {uuid} is held by {other} and claimed by {owner}")
        self._drop(owner)
        for uuid in devices:
            self._free[_pool(self.devices[uuid])].remove(self._order[uuid])
        self._hold(owner, devices)
        self._unqueue(owner)

    def rebuild(self, live: Mapping[str, Iterable[str]]) -> ReconcileReport:
        """Reset holdings to exactly what Docker says runs now (hub start)."""
        for owner in list(self.holdings):
            self._drop(owner)
        return self.reconcile(live)

    def reconcile(self, live: Mapping[str, Iterable[str]]) -> ReconcileReport:
        """Make the ledger agree with the containers that exist now.

        Holdings whose container is gone are released; holdings found only in
        Docker are adopted; a device claimed by two containers (or unknown to the
        inventory) is reported, never adopted twice. Call `dispatch()` after.
        """
        live = {owner: tuple(devs) for owner, devs in live.items()}
        released = {o: d for o, d in self.holdings.items() if o not in live}
        for owner in released:
            self._drop(owner)
        adopted: dict[str, tuple[str, ...]] = {}
        conflicts: dict[str, tuple[str, ...]] = {}
        for owner, devices in sorted(live.items()):
            if self.holdings.get(owner) == devices:
                continue
            try:
                self.adopt(owner, devices)
                adopted[owner] = devices
            except AllocationError:
                conflicts[owner] = devices
        return ReconcileReport(released, adopted, conflicts)

    # --- internals ---------------------------------------------------------------------------
    def _take(self, pools: list[str], count: int) -> tuple[str, ...]:
        """Remove `count` free devices from `pools`, lowest first (neighbouring GPUs together)."""
        if len(pools) == 1:
            free = self._free[pools[0]]
            keys = free[:count]
            del free[:count]
        else:
            keys = heapq.nsmallest(count, (k for p in pools for k in self._free[p]))
            for k in keys:
                self._free[_pool(self.devices[k[2]])].remove(k)
        return tuple(k[2] for k in keys)

    def _hold(self, owner: str, devices: tuple[str, ...]) -> None:
        for uuid in devices:
            self.holder[uuid] = owner
        self.holdings[owner] = devices

    def _drop(self, owner: str) -> None:
        """Free the owner's devices without handing them on (callers dispatch)."""
        for uuid in self.holdings.pop(owner, ()):
            del self.holder[uuid]
            bisect.insort(self._free[_pool(self.devices[uuid])], self._order[uuid])

    def _unqueue(self, owner: str) -> bool:
        waiter = self._waiting.pop(owner, None)
        if waiter is None:
            return False
        self._waiters.remove(waiter)
        return True


def _pool(device: Device) -> str:
    return f"mig:{device.mig_profile}" if device.is_mig else f"gpu:{device.model}"
