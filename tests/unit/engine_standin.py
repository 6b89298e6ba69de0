"""An in-memory container engine for the GPU service's unit harness (a stand-in at the engine boundary).

It implements the `Engine` seam (list / inspect / stop / remove) plus `create` and
`start`, which stand in for what dockerspawner asks Docker to do. Like a real
engine behind a thread pool, a call keeps running when the coroutine awaiting it
is cancelled. Any call can be held at a gate (`hold`) or made to fail (`fail`),
so a test can produce every interleaving deterministically.

It also keeps the engine-side record that tests judge by: whenever a container
starts running, the devices it got, and whether another running container
already had one of them.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from spawner import container
from spawner.engine import ContainerView, EngineError


@dataclass
class _Container:
    id: str
    labels: dict[str, str]
    devices: tuple[str, ...]
    state: str = "created"
    created: int = 0
    memory_limit: int = 2 * 1024**3
    finished: float = 0.0


@dataclass
class Gate:
    """A held call: it has reached the engine and waits for `open()`."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def open(self) -> None:
        self.opened.set()


class EngineStandIn:
    def __init__(self):
        self.containers: dict[str, _Container] = {}
        self._ids = itertools.count(1)
        self._gates: dict[str, list[Gate]] = {}
        self._failures: dict[str, int] = {}
        self.shared: list[tuple[str, str, str]] = []  # (device, container, other running container)
        self.calls: list[tuple[str, str]] = []
        self.watches: list[tuple[dict, object]] = []  # (labels, on_kill) of watch_oom

    # --- test controls ------------------------------------------------------------------------
    def hold(self, call: str) -> Gate:
        gate = Gate()
        self._gates.setdefault(call, []).append(gate)
        return gate

    def fail(self, call: str, times: int = 1) -> None:
        self._failures[call] = self._failures.get(call, 0) + times

    def running_on(self, device: str) -> list[str]:
        return [c.id for c in self.containers.values() if c.state == "running" and device in c.devices]

    def oom(self, container_id: str, at: float | None = None) -> None:
        """The kernel OOM-killed a process in this container: tell the watchers, as Docker's event
        stream would, from a thread of its own."""
        import threading
        import time

        at = time.time() if at is None else at
        c = self.containers[container_id]
        for labels, on_kill in self.watches:
            if all(c.labels.get(k) == v for k, v in labels.items()):
                t = threading.Thread(target=on_kill, args=(container_id, dict(c.labels), at))
                t.start()
                t.join()

    def add(self, user: str, server: str, devices, state="running", lease="", hub="hub") -> str:
        """A container made outside the harness's spawns (an earlier hub, an orphan)."""
        cid = self._create(user, server, tuple(devices), lease, hub)
        if state == "running":
            self._run(cid)
        else:
            self.containers[cid].state = state
        return cid

    # --- the seam ---------------------------------------------------------------------------------
    async def list(self, labels):
        def result():
            return [
                self._view(c) for c in self.containers.values() if all(c.labels.get(k) == v for k, v in labels.items())
            ]

        return await self._call("list", result)

    async def inspect(self, container_id):
        def result():
            c = self.containers.get(container_id)
            return self._view(c) if c else None

        return await self._call("inspect", result)

    async def stop(self, container_id, timeout):
        def act():
            c = self.containers.get(container_id)
            if c and c.state == "running":
                c.state = "exited"

        return await self._call("stop", act, act_late=True)

    async def remove(self, container_id):
        return await self._call("remove", lambda: self.containers.pop(container_id, None), act_late=True)

    def watch_oom(self, labels, on_kill):
        self.watches.append((dict(labels), on_kill))
        return lambda: self.watches.remove((dict(labels), on_kill))

    # --- what dockerspawner would do -------------------------------------------------------------
    async def create(self, user: str, server: str, devices, lease: str, hub="hub") -> str:
        return await self._call("create", lambda: self._create(user, server, tuple(devices), lease, hub), act_late=True)

    async def start(self, container_id: str) -> None:
        def act():
            if container_id not in self.containers:
                raise EngineError(f"No such container: {container_id}")
            self._run(container_id)

        return await self._call("start", act, act_late=True)

    # --- internals ---------------------------------------------------------------------------------
    def _create(self, user, server, devices, lease, hub) -> str:
        n = next(self._ids)
        cid = f"c{n:02d}"
        labels = {
            container.LABEL_HUB: hub,
            container.LABEL_USER: user,
            container.LABEL_SERVER: server,
            container.LABEL_DEVICES: ",".join(devices),
            container.LABEL_LEASE: lease,
        }
        self.containers[cid] = _Container(cid, labels, devices, created=n)
        return cid

    def _run(self, cid: str) -> None:
        c = self.containers[cid]
        for device in c.devices:
            for other in self.running_on(device):
                if other != cid:
                    self.shared.append((device, cid, other))
        c.state = "running"

    def _view(self, c: _Container) -> ContainerView:
        return ContainerView(
            c.id,
            dict(c.labels),
            c.devices,
            c.state,
            0,
            f"{c.created:06d}",
            memory_limit=c.memory_limit,
            finished=c.finished,
        )

    async def _call(self, name: str, fn, act_late: bool = False):
        """Run `fn` as the engine would: a held call computes its answer (or acts) only when its gate opens
        for actions, or answers with what it computed when it arrived for questions (a stale snapshot)."""
        self.calls.append((name, ""))

        async def run():
            gates = self._gates.get(name)
            gate = gates.pop(0) if gates else None
            early = None if act_late else fn()
            if gate is not None:
                gate.reached.set()
                await gate.opened.wait()
            if self._failures.get(name):
                self._failures[name] -= 1
                raise EngineError(f"{name}: 500 Server Error (injected)")
            return fn() if act_late else early

        # Like an executor call: cancelling the awaiting coroutine does not stop the engine.
        return await asyncio.shield(asyncio.ensure_future(run()))
