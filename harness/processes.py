"""Processes on this machine, read from /proc (Linux): what a hub, or a whole test run, leaves behind.

JupyterHub starts its proxy and its managed services (the idle culler) in sessions of their own,
so they outlive a hub killed with SIGKILL and a kill of the hub's process group misses them. They
keep the hub's working directory, which is how `in_directory` finds them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    pid: int
    started: int  # clock ticks after boot: with the PID, names one process even after PID reuse
    ppid: int
    cmdline: str
    cwd: str  # "" when unreadable; a deleted directory keeps its path, without " (deleted)"

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.started)

    def works_in(self, directory: Path) -> bool:
        """Whether its working directory is `directory` or below it."""
        top = str(Path(directory).resolve()).rstrip("/")
        return bool(self.cwd) and (self.cwd == top or self.cwd.startswith(top + "/"))

    def environ(self) -> dict[str, str]:
        """Its environment at start; empty when unreadable (another user's process, or gone)."""
        try:
            raw = (PROC / str(self.pid) / "environ").read_bytes()
        except OSError:
            return {}
        return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def running() -> list[Process]:
    """Every live process this user may see, zombies left out; [] where there is no /proc."""
    found = []
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if entry.name.isdigit():
            process = _read(int(entry.name))
            if process is not None:
                found.append(process)
    return found


def in_directory(directory: Path) -> list[Process]:
    """Live processes whose working directory is `directory` or below it (this process excepted)."""
    return [p for p in running() if p.pid != os.getpid() and p.works_in(directory)]


def descends_from(process: Process, ancestor: int, by_pid: dict[int, Process]) -> bool:
    """Whether `ancestor` is a parent, grandparent, ... of `process` (within the snapshot `by_pid`)."""
    seen: set[int] = set()
    while process.ppid not in seen and process.ppid > 1:
        if process.ppid == ancestor:
            return True
        seen.add(process.ppid)
        parent = by_pid.get(process.ppid)
        if parent is None:
            return False
        process = parent
    return False


def kill(processes: Iterable[Process]) -> None:
    """SIGKILL each process that is still the one listed (not a new one under a reused PID)."""
    for p in processes:
        current = _read(p.pid)
        if current is not None and current.started == p.started:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _read(pid: int) -> Process | None:
    base = PROC / str(pid)
    try:
        stat = (base / "stat").read_text()
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    # "pid (comm) state ppid ... starttime": comm may hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited; it only waits for its parent
        return None
    try:
        cwd = os.readlink(base / "cwd").removesuffix(" (deleted)")
    except OSError:
        cwd = ""
    return Process(pid, int(fields[19]), int(fields[1]), cmdline, cwd)
