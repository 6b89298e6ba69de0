"""What happened inside a running server that its user should hear about: a process killed for memory.

When a container reaches its memory limit the kernel's OOM killer ends its largest process:
usually a notebook kernel, while the Jupyter server (the container's main process) lives on and
JupyterLab only says "the kernel died". Docker reports every such kill as an `oom` event. The
GPU service turns it into an incident that the hub's home page and JupyterLab's banner show,
with the limit, for `show_for` seconds or until the server stops. A kill that ends the container
itself is told by the stop message instead (GPUService._exited).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

OOM = "oom"


@dataclass(frozen=True)
class Incident:
    reason: str
    at: float
    message: str
    container: str = ""  # the server's container it happened in: a new start has none of its past


def size_text(n: int) -> str:
    """Bytes as a memory limit is written (8G, 512M, 1.5G)."""
    for unit, size in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n / 1024**3:.1f}G" if n >= 1024**3 else f"{n // 1024**2}M"


def out_of_memory(limit: int) -> str:
    """The words every out-of-memory message starts with: "out of memory: limit 8G"."""
    return "out of memory" + (f": limit {size_text(limit)}" if limit > 0 else "")


def oom_message(limit: int, at: float, kills: int = 1) -> str:
    when = time.strftime("%H:%M", time.gmtime(at))
    what = "A process in your server (usually a kernel) was" if kills == 1 else f"{kills} processes in your server were"
    words = out_of_memory(limit)
    return (
        f"{words[0].upper()}{words[1:]}. {what} killed, last at {when} UTC. "
        "Restart the kernel, then use less memory or start a profile with more."
    )


class Incidents:
    """The latest incident per server owner ("user/server"), for as long as that container runs."""

    def __init__(self, show_for: float = 1800, clock: Callable[[], float] = time.time):
        self.show_for = show_for
        self.clock = clock
        self._latest: dict[str, Incident] = {}
        self._kills: dict[str, int] = {}

    def oom(self, owner: str, limit: int, at: float | None = None, container: str = "") -> Incident:
        at = self.clock() if at is None else at
        latest = self.current(owner, container)
        kills = self._kills.get(owner, 0) + 1 if latest is not None and latest.reason == OOM else 1
        self._kills[owner] = kills
        incident = Incident(OOM, at, oom_message(limit, at, kills), container)
        self._latest[owner] = incident
        return incident

    def current(self, owner: str, container: str = "") -> Incident | None:
        """The incident to show now; `container`: only one that happened in this container."""
        incident = self._latest.get(owner)
        if incident is None:
            return None
        if self.clock() - incident.at > self.show_for or (container and incident.container != container):
            self.clear(owner)
            return None
        return incident

    def clear(self, owner: str) -> None:
        """The server stopped (or starts anew): what happened in it is over."""
        self._latest.pop(owner, None)
        self._kills.pop(owner, None)
