"""The engine seam: the few container-engine calls the GPU service makes, and Docker's version of them.

Narrow on purpose. The GPU service needs to list this hub's containers, ask
about one by id, stop one and remove one, and it must be able to tell "the
engine says this container does not exist" (the only word on which devices go
back) from "the engine did not answer" (after which nothing is known). A unit
harness implements the same four calls in memory and can hold, fail or cancel
any of them; a later backend (Docker Swarm: node + service) fits the same shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from . import container

#: States in which a container may be running code, or may be made to (a start in flight).
HOLDING_STATES = frozenset({"created", "running", "restarting", "paused", "removing"})


class EngineError(Exception):
    """The engine did not give an answer (HTTP 5xx, timeout, connection refused): nothing is known."""


@dataclass(frozen=True)
class ContainerView:
    """What the engine says about one container: its labels, the devices it asked for, its state."""

    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    devices: tuple[str, ...] = ()  # from gpuhub's label and the engine's own device requests
    state: str = "running"  # created, running, restarting, paused, removing, exited, dead
    exit_code: int = 0
    created: str = ""  # sortable creation time: at a conflict, the older container is the holder
    oom_killed: bool = False  # the kernel's OOM killer ended it (its memory limit)
    memory_limit: int = 0  # bytes; 0 = none
    node: str = ""  # the Swarm node it runs (or last ran) on; "" on a single host
    finished: float = 0.0  # epoch seconds its process last ended; 0 = never or unknown

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting", "paused")

    @property
    def may_hold_devices(self) -> bool:
        """Running, or could start running without gpuhub (a `docker start` already sent)."""
        return self.state in HOLDING_STATES

    @property
    def owner(self) -> str:
        return f"{self.labels.get(container.LABEL_USER, '')}/{self.labels.get(container.LABEL_SERVER, '')}"


class Engine(Protocol):
    async def list(self, labels: Mapping[str, str]) -> list[ContainerView]:
        """Every container (any state) carrying all these labels."""

    async def inspect(self, container_id: str) -> ContainerView | None:
        """The container, or None when the engine says it does not exist (404)."""

    async def stop(self, container_id: str, timeout: float) -> None:
        """Stop it (SIGTERM, then SIGKILL after `timeout`); a missing container is already stopped."""

    async def remove(self, container_id: str) -> None:
        """Force-remove it (kills it if running); returns once the engine says it is gone."""


def devices_of(labels: Mapping[str, str], device_requests: list | None) -> tuple[str, ...]:
    """Devices a container holds: gpuhub's label, plus any the engine was asked for (they can differ)."""
    found = [d for d in labels.get(container.LABEL_DEVICES, "").split(",") if d]
    for request in device_requests or []:
        found += [d for d in request.get("DeviceIDs") or [] if d not in found]
    return tuple(found)


class DockerEngine:
    """The seam on the Docker Engine API, through docker-py, in a thread pool of its own."""

    def __init__(self, client_kwargs: Mapping | None = None, threads: int = 8):
        import docker  # noqa: F401 - imported here so pure modules can import this one cheaply
        from docker.utils import kwargs_from_env

        self._kwargs = {**kwargs_from_env(), "version": "auto", **(client_kwargs or {})}
        self._client = None
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="gpuhub-engine")

    @property
    def client(self):
        if self._client is None:
            import docker

            self._client = docker.APIClient(**self._kwargs)
        return self._client

    async def _call(self, method: str, *args, **kwargs):
        import docker.errors
        import requests

        def call():
            return getattr(self.client, method)(*args, **kwargs)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except docker.errors.NotFound:
            raise
        except (docker.errors.DockerException, requests.RequestException, OSError) as e:
            raise EngineError(f"docker {method}: {_reason(e)}") from None

    async def list(self, labels: Mapping[str, str]) -> list[ContainerView]:
        summaries = await self._call("containers", all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]})
        views = await asyncio.gather(*(self.inspect(s["Id"]) for s in summaries))
        return [v for v in views if v is not None]

    async def inspect(self, container_id: str) -> ContainerView | None:
        import docker.errors

        try:
            info = await self._call("inspect_container", container_id)
        except docker.errors.NotFound:
            return None
        labels = info["Config"].get("Labels") or {}
        state = info.get("State") or {}
        return ContainerView(
            id=info["Id"],
            labels=labels,
            devices=devices_of(labels, (info.get("HostConfig") or {}).get("DeviceRequests")),
            state=state.get("Status") or ("running" if state.get("Running") else "exited"),
            exit_code=int(state.get("ExitCode") or 0),
            created=info.get("Created", ""),
            oom_killed=bool(state.get("OOMKilled")),
            memory_limit=int((info.get("HostConfig") or {}).get("Memory") or 0),
            finished=engine_time(state.get("FinishedAt") or ""),
        )

    def watch_oom(self, labels: Mapping[str, str], on_kill: Callable[[str, Mapping[str, str], float], None]):
        """Call `on_kill(container id, its labels, epoch time)`, from a thread of its own, each time
        the kernel OOM-kills a process in a container carrying these labels (Docker's `oom` event:
        also when the container itself lives on). Reconnects after an error and asks for what it
        missed meanwhile; returns a function that stops the watch."""
        return _EventWatch(self._kwargs, labels, ("oom",), on_kill).start()

    async def stop(self, container_id: str, timeout: float) -> None:
        import docker.errors

        try:
            await self._call("stop", container_id, timeout=int(timeout))
        except docker.errors.NotFound:
            pass

    async def remove(self, container_id: str) -> None:
        import docker.errors

        try:
            await self._call("remove_container", container_id, force=True)
        except docker.errors.NotFound:
            return
        # A 204 means removed; confirm with the engine's own word rather than assume.
        if await self.inspect(container_id) is not None:
            raise EngineError(f"docker rm -f {container_id[:12]}: the container is still there")


def engine_time(text: str) -> float:
    """Docker's RFC 3339 time ("2026-11-27T10:00:05.123456789Z") as epoch seconds; 0 for none."""
    from datetime import datetime, timezone

    stamp, _, fraction = text.rstrip("Z").partition(".")
    try:
        seconds = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0.0
    if seconds <= 0:
        return 0.0  # Docker's "0001-01-01T00:00:00Z": never
    digits = "".join(c for c in fraction if c.isdigit())[:9]
    return seconds + (int(digits) / 10 ** len(digits) if digits else 0.0)


def _reason(error: Exception) -> str:
    text = str(getattr(error, "explanation", "") or error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


class _EventWatch:
    """One thread following the engine's event stream for some container events."""

    RETRY_S = 5.0

    def __init__(self, client_kwargs: Mapping, labels: Mapping[str, str], events: tuple[str, ...], on_event: Callable):
        self._kwargs = dict(client_kwargs)
        self._filters = {"type": ["container"], "event": list(events), "label": [f"{k}={v}" for k, v in labels.items()]}
        self._on_event = on_event
        self._stopped = threading.Event()
        self._stream = None
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()  # replayed after a reconnect

    def start(self) -> Callable[[], None]:
        threading.Thread(target=self._run, name="gpuhub-engine-events", daemon=True).start()
        return self.stop

    def stop(self) -> None:
        self._stopped.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def _run(self) -> None:
        import docker

        since = time.time()
        while not self._stopped.is_set():
            try:
                client = docker.APIClient(**self._kwargs)
                self._stream = client.events(since=int(since), decode=True, filters=self._filters)
                for event in self._stream:
                    at = int(event.get("timeNano") or 0) / 1e9 or float(event.get("time") or time.time())
                    key = (str(event.get("id", "")), int(event.get("timeNano") or 0))
                    if key in self._seen:
                        continue
                    self._seen[key] = None
                    while len(self._seen) > 1000:
                        self._seen.popitem(last=False)
                    since = max(since, at - 1)
                    attributes = (event.get("Actor") or {}).get("Attributes") or {}
                    try:
                        self._on_event(key[0], attributes, at)
                    except Exception:
                        logging.getLogger("gpuhub").exception("gpuhub: handling engine event %s failed", key)
            except Exception as e:
                if not self._stopped.is_set():
                    logging.getLogger("gpuhub").warning(
                        "gpuhub: engine event stream ended (%s); again in %.0f s", _reason(e), self.RETRY_S
                    )
            self._stopped.wait(self.RETRY_S)
