"""The ledger of leases: who holds which device, what is quarantined, who waits. Pure: no Docker, no NVML.

A server (its *owner* key, e.g. "alice/" or "alice/big") asks for a Request.
`Ledger.request()` either grants a **lease** at once (an id and exact device
UUIDs) or puts the owner in the queue. Once the server's container exists the
lease is *bound* to that container's id; from then on only that container's
end (`gone(container_id)`) gives the devices back. An owner holds at most one
lease.

Devices that a container uses but that no lease accounts for (two containers on
one device, a device missing from the inventory, a partial holding) and devices
that are unhealthy are **quarantined** under a key (the container id, or
"health:<uuid>"): nobody gets them until that key is lifted.

Queue order is (priority, arrival): a higher priority goes first, equal
priorities are first come, first served. A waiter that cannot be served yet
*reserves* the free devices it could use, so later arrivals asking for the same
kind cannot overtake it (a 2-GPU request is not starved by a stream of 1-GPU
ones); later arrivals asking for other kinds go ahead on other devices.
Multi-device requests are all-or-nothing.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .devices import Device, Request


class AllocationError(ValueError):
    """A request that can never be served, or an inconsistent ledger operation."""


@dataclass(frozen=True)
class Lease:
    id: str
    owner: str
    devices: tuple[str, ...]
    container: str | None = None  # the container the lease is bound to, once it exists
    charged_to: str = ""  # the quota its devices count against


@dataclass(frozen=True)
class Waiter:
    lease_id: str
    owner: str
    request: Request
    priority: int
    arrival: int
    charged_to: str = ""
    since: float = 0.0  # when it joined the queue (epoch seconds, kept over a hub restart)


@dataclass(order=True)
class _Entry:
    sort_key: tuple[int, int]
    waiter: Waiter = field(compare=False)


def new_lease_id() -> str:
    return secrets.token_hex(8)


class Ledger:
    def __init__(self, devices: Iterable[Device]):
        self.devices: dict[str, Device] = {}
        for d in devices:
            if d.uuid in self.devices:
                raise AllocationError(f"device {d.uuid} is listed twice")
            self.devices[d.uuid] = d
        # Devices are grouped in pools of one kind (a MIG profile, or a GPU model);
        # each pool keeps its free devices sorted by NVML index, so a decision touches few of them.
        self._pools: dict[str, list[Device]] = {}
        for d in sorted(self.devices.values(), key=lambda d: d.order):
            self._pools.setdefault(_pool(d), []).append(d)
        self._free: dict[str, list[tuple]] = {p: [d.order for d in ds] for p, ds in self._pools.items()}
        self._node_of: dict[str, str] = {p: ds[0].node for p, ds in self._pools.items()}
        self._pools_of: dict[Request, tuple[str, ...]] = {}
        self.leases: dict[str, Lease] = {}
        self.by_owner: dict[str, str] = {}  # owner -> lease id
        self.by_container: dict[str, str] = {}  # container id -> lease id
        self.holder: dict[str, str] = {}  # device uuid -> lease id
        self.quarantine: dict[str, tuple[tuple[str, ...], str]] = {}  # key -> (devices, reason)
        self._blocked: dict[str, set[str]] = {}  # device uuid -> quarantine keys
        self._blocked_in: dict[str, int] = {}  # pool -> its quarantined devices
        self._queue: list[_Entry] = []  # kept sorted
        self._waiting: dict[str, _Entry] = {}  # owner -> entry
        self._arrival = itertools.count()
        self._granted_aside: list[Lease] = []

    # --- questions ---------------------------------------------------------------------------
    @property
    def holdings(self) -> dict[str, tuple[str, ...]]:
        """owner -> devices of its lease."""
        return {lease.owner: lease.devices for lease in self.leases.values()}

    def lease_of(self, owner: str) -> Lease | None:
        lease_id = self.by_owner.get(owner)
        return self.leases[lease_id] if lease_id else None

    def free(self, request: Request | None = None) -> list[Device]:
        pools = self._pools if request is None else self.pools_for(request)
        return sorted((self.devices[key[2]] for p in pools for key in self._free[p]), key=lambda d: d.order)

    def total(self, request: Request) -> int:
        return sum(len(self._pools[p]) for p in self.pools_for(request))

    def usable(self, request: Request) -> int:
        """Devices of this kind that are not quarantined (held or free)."""
        return sum(len(self._pools[p]) - self._blocked_in.get(p, 0) for p in self.pools_for(request))

    def largest(self, request: Request, besides: frozenset[str] = frozenset()) -> int:
        """The most devices of this kind one node can hand out (not quarantined): a lease never
        spans nodes. On a single host this is `usable`. Devices blocked only by the quarantines
        `besides` (ones about to end) count as available."""
        per_node: dict[str, int] = {}
        for p in self.pools_for(request):
            count = len(self._pools[p]) - self._blocked_in.get(p, 0)
            if besides:
                count += sum(1 for d in self._pools[p] if (keys := self._blocked.get(d.uuid)) and keys <= besides)
            per_node[self._node_of[p]] = per_node.get(self._node_of[p], 0) + count
        return max(per_node.values(), default=0)

    def satisfiable(self, request: Request, besides: frozenset[str] = frozenset()) -> bool:
        """Could this request be served on this inventory once every lease has ended (and the
        quarantines `besides`, ones about to end, are over)?"""
        return self.largest(request, besides) >= request.count

    def pools_for(self, request: Request) -> tuple[str, ...]:
        pools = self._pools_of.get(request)
        if pools is None:
            pools = tuple(p for p, ds in self._pools.items() if request.accepts(ds[0]))
            self._pools_of[request] = pools
        return pools

    def waiting(self) -> list[Waiter]:
        return [e.waiter for e in self._queue]

    def waiter(self, owner: str) -> Waiter | None:
        entry = self._waiting.get(owner)
        return entry.waiter if entry else None

    def position(self, owner: str) -> tuple[int, int] | None:
        """(1-based position, queue length) among waiters competing for the same kind of device."""
        me = self._waiting.get(owner)
        if me is None:
            return None
        mine = set(self.pools_for(me.waiter.request))
        same = [e for e in self._queue if mine.intersection(self.pools_for(e.waiter.request))]
        return same.index(me) + 1, len(same)

    def waiting_for(self, request: Request) -> int:
        """How many queued waiters compete for the kind of device `request` asks for."""
        mine = set(self.pools_for(request))
        return sum(1 for e in self._queue if mine.intersection(self.pools_for(e.waiter.request)))

    def quarantined(self, uuid: str) -> list[str]:
        """Why a device is quarantined (one reason per key); empty if it is not."""
        return [self.quarantine[k][1] for k in sorted(self._blocked.get(uuid, ()))]

    # --- leases ------------------------------------------------------------------------------
    def request(
        self,
        owner: str,
        request: Request,
        priority: int = 0,
        charged_to: str = "",
        lease_id: str | None = None,
        arrival: int | None = None,
        since: float = 0.0,
        besides: frozenset[str] = frozenset(),
    ) -> Lease | None:
        """Grant a lease at once, or queue `owner` and return None (also while only the quarantines
        `besides`, ones about to end, stand in its way).

        `arrival` puts a restored queue entry back in its old place (queue persisted
        over a hub restart); new entries come after every entry seen so far. `since`
        is when the owner joined the queue (the caller's clock; shown to lab admins).
        """
        if owner in self.by_owner or owner in self._waiting:
            raise AllocationError(f"{owner} already holds or waits for GPU devices")
        if not self.satisfiable(request, besides):
            raise AllocationError(
                f"{request.label} can never be served: {_where(self)} {self.largest(request)} such device(s)"
            )
        if arrival is None:
            arrival = next(self._arrival)
        else:
            self._arrival = itertools.count(max(arrival + 1, next(self._arrival)))
        waiter = Waiter(lease_id or new_lease_id(), owner, request, priority, arrival, charged_to, since)
        entry = _Entry((-priority, arrival), waiter)
        bisect.insort(self._queue, entry)
        self._waiting[owner] = entry
        mine = None
        for lease in self.dispatch():
            if lease.owner == owner:
                mine = lease
            else:  # devices freed without a dispatch (a lifted quarantine): others go first
                self._granted_aside.append(lease)
        return mine

    def granted_aside(self) -> list[Lease]:
        """Leases `request()` granted to other waiters on the way; their waiters must be told, once."""
        found, self._granted_aside = self._granted_aside, []
        return found

    def bind(self, lease_id: str, container: str) -> Lease:
        """The lease's container exists: from now on only its end frees the devices."""
        lease = self.leases.get(lease_id)
        if lease is None:
            raise AllocationError(f"lease {lease_id} does not exist")
        if lease.container not in (None, container):
            raise AllocationError(f"lease {lease_id} is bound to container {lease.container[:12]} already")
        other = self.by_container.get(container)
        if other not in (None, lease_id):
            raise AllocationError(f"container {container[:12]} is bound to lease {other} already")
        lease = self.leases[lease_id] = replace(lease, container=container)
        self.by_container[container] = lease_id
        return lease

    def requeue(self, owner: str, priority: int, charged_to: str) -> list[Lease]:
        """Keep a waiter's arrival but give it a new priority and quota; returns the leases this made."""
        entry = self._waiting[owner]
        self._queue.remove(entry)
        w = replace(entry.waiter, priority=priority, charged_to=charged_to)
        entry = _Entry((-priority, w.arrival), w)
        bisect.insort(self._queue, entry)
        self._waiting[owner] = entry
        return self.dispatch()

    def recharge(self, lease_id: str, charged_to: str) -> None:
        """Count a lease against another quota (admission decided anew after a restart)."""
        self.leases[lease_id] = replace(self.leases[lease_id], charged_to=charged_to)

    def cancel(self, owner: str) -> list[Lease]:
        """Leave the queue (the user gave up). Returns leases this made possible for others."""
        if self._unqueue(owner):
            return self.dispatch()
        return []

    def blocked_by(self, uuid: str) -> dict[str, str]:
        """Quarantine key -> reason, for every quarantine that holds this device."""
        return {k: self.quarantine[k][1] for k in sorted(self._blocked.get(uuid, ()))}

    def release(self, lease_id: str) -> list[Lease]:
        """End a lease (its container is gone, or never existed). Returns the leases granted to waiters."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return []
        del self.by_owner[lease.owner]
        if lease.container:
            self.by_container.pop(lease.container, None)
        for uuid in lease.devices:
            del self.holder[uuid]
            self._maybe_free(uuid)
        return self.dispatch()

    def gone(self, container: str) -> list[Lease]:
        """The engine confirmed this container no longer exists: end what it held."""
        grants: list[Lease] = []
        lease_id = self.by_container.get(container)
        if lease_id is not None:
            grants += self.release(lease_id)
        if container in self.quarantine:
            grants += self.lift(container)
        return grants

    def adopt(
        self, owner: str, devices: Iterable[str], container: str, lease_id: str | None = None, charged_to: str = ""
    ) -> Lease:
        """Record a lease found in the engine (hub restart, or a container nobody knew). All or nothing."""
        devices = tuple(devices)
        if owner in self.by_owner or owner in self._waiting:
            raise AllocationError(f"{owner} already holds or waits for GPU devices")
        if container in self.by_container:
            raise AllocationError(f"container {container[:12]} is bound to lease {self.by_container[container]}")
        for uuid in devices:
            if uuid not in self.devices:
                raise AllocationError(f"device {uuid} is not in the inventory")
            if uuid in self.holder:
                raise AllocationError(f"device {uuid} is held by lease {self.holder[uuid]}")
        lease = Lease(lease_id or new_lease_id(), owner, devices, container, charged_to)
        if lease.id in self.leases:
            lease = replace(lease, id=new_lease_id())
        for uuid in devices:
            self._unfree(uuid)
            self.holder[uuid] = lease.id
        self.leases[lease.id] = lease
        self.by_owner[owner] = lease.id
        self.by_container[container] = lease.id
        return lease

    # --- quarantine --------------------------------------------------------------------------
    def block(self, key: str, devices: Iterable[str], reason: str) -> None:
        """Make devices unavailable to everyone until `lift(key)`. Unknown UUIDs are kept for the record."""
        devices = tuple(devices)
        self.lift_quietly(key)
        self.quarantine[key] = (devices, reason)
        for uuid in devices:
            keys = self._blocked.setdefault(uuid, set())
            if uuid in self.devices:
                self._unfree(uuid)
                if not keys:
                    pool = _pool(self.devices[uuid])
                    self._blocked_in[pool] = self._blocked_in.get(pool, 0) + 1
            keys.add(key)

    def lift(self, key: str) -> list[Lease]:
        """End a quarantine; returns leases this made possible."""
        if self.lift_quietly(key):
            return self.dispatch()
        return []

    def lift_quietly(self, key: str) -> bool:
        entry = self.quarantine.pop(key, None)
        if entry is None:
            return False
        for uuid in entry[0]:
            keys = self._blocked.get(uuid)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._blocked[uuid]
                    if uuid in self.devices:
                        self._blocked_in[_pool(self.devices[uuid])] -= 1
            if uuid in self.devices:
                self._maybe_free(uuid)
        return True

    # --- the queue ---------------------------------------------------------------------------
    def dispatch(self) -> list[Lease]:
        """Serve waiters in queue order; blocked waiters reserve what they could use."""
        available = {p: len(f) for p, f in self._free.items() if f}
        remaining = sum(available.values())
        granted: list[Lease] = []
        for entry in self._queue:
            if remaining == 0:
                break
            w = entry.waiter
            if self.largest(w.request) < w.request.count:
                continue  # unservable while devices are quarantined: it must not hold others up
            pools = [p for p in self.pools_for(w.request) if available.get(p)]
            node_pools = self._one_node(pools, available, w.request.count)
            if node_pools:
                chosen = self._take(node_pools, w.request.count)
                for uuid in chosen:
                    available[_pool(self.devices[uuid])] -= 1
                    self.holder[uuid] = w.lease_id
                remaining -= len(chosen)
                lease = Lease(w.lease_id, w.owner, chosen, None, w.charged_to)
                self.leases[lease.id] = lease
                self.by_owner[w.owner] = lease.id
                granted.append(lease)
            else:
                for p in pools:  # reserve: later arrivals may not take these
                    remaining -= available.pop(p)
        if granted:
            served = {g.owner for g in granted}
            self._queue = [e for e in self._queue if e.waiter.owner not in served]
            for owner in served:
                self._waiting.pop(owner, None)
        return granted

    # --- internals ---------------------------------------------------------------------------
    def _one_node(self, pools: list[str], available: dict[str, int], count: int) -> list[str]:
        """The pools of one node that can serve `count` devices together; [] if no node can.

        Best fit: the node with the fewest such devices free that still has enough, so whole
        nodes stay free for larger requests. On a single host there is one node, "".
        """
        by_node: dict[str, list[str]] = {}
        for p in pools:
            by_node.setdefault(self._node_of[p], []).append(p)
        fits = [
            (sum(available[p] for p in ps), node, ps)
            for node, ps in by_node.items()
            if sum(available[p] for p in ps) >= count
        ]
        return min(fits)[2] if fits else []

    def nodes(self) -> dict[str, list[str]]:
        """node -> its devices' UUIDs (one node, "", on a single host)."""
        found: dict[str, list[str]] = {}
        for d in self.devices.values():
            found.setdefault(d.node, []).append(d.uuid)
        return found

    def _take(self, pools: list[str], count: int) -> tuple[str, ...]:
        """Remove `count` free devices from `pools`, lowest NVML index first (neighbouring GPUs together)."""
        if len(pools) == 1:
            free = self._free[pools[0]]
            keys = free[:count]
            del free[:count]
        else:
            keys = heapq.nsmallest(count, (k for p in pools for k in self._free[p]))
            for k in keys:
                self._free[_pool(self.devices[k[2]])].remove(k)
        return tuple(k[2] for k in keys)

    def _unfree(self, uuid: str) -> None:
        free = self._free[_pool(self.devices[uuid])]
        key = self.devices[uuid].order
        i = bisect.bisect_left(free, key)
        if i < len(free) and free[i] == key:
            del free[i]

    def _maybe_free(self, uuid: str) -> None:
        if uuid in self.holder or uuid in self._blocked:
            return
        free = self._free[_pool(self.devices[uuid])]
        key = self.devices[uuid].order
        i = bisect.bisect_left(free, key)
        if i == len(free) or free[i] != key:
            free.insert(i, key)

    def _unqueue(self, owner: str) -> bool:
        entry = self._waiting.pop(owner, None)
        if entry is None:
            return False
        self._queue.remove(entry)
        return True


def _pool(device: Device) -> str:
    kind = f"mig:{device.mig_profile}" if device.is_mig else f"gpu:{device.model}"
    return f"{device.node}|{kind}" if device.node else kind


def _where(ledger: Ledger) -> str:
    return "this host has" if set(ledger.nodes()) <= {""} else "the largest node has"
