"""What gpuhub's read endpoints answer (docs/api.md), built from plain data. Pure: no hub, no database.

Each builder takes a `may_read(user)` (or `may_read_group`) answer from the caller's scopes and cuts
its rows to it: a device held by someone the caller may not read shows `{"hidden": true}` as its
holder; queue entries and groups the caller may not read are left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from . import budget, quota
from .allocator import Lease, Waiter
from .devices import Device


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def gpu_map(
    devices: Iterable[Device],
    holders: Mapping[str, Lease],
    servers: Mapping[str, Any],
    telemetry: Mapping[str, dict | None],
    quarantine: Mapping[str, Iterable[str]],
    liftable: Callable[[str], bool],
    may_read: Callable[[str], bool],
) -> list[dict[str, Any]]:
    """Every device, grouped by physical GPU in NVML order.

    `holders`: device UUID -> its lease; `servers`: owner -> what its spawner told (profile, started);
    `telemetry`: device UUID -> its latest reading (None before the first); `quarantine`: device UUID ->
    the reasons it is given to nobody.
    """
    gpus: dict[str, dict[str, Any]] = {}
    for d in sorted(devices, key=lambda d: d.order):
        gpu_uuid = d.parent if d.is_mig and d.parent else d.uuid
        gpu = gpus.get(gpu_uuid)
        if gpu is None:
            gpu = gpus[gpu_uuid] = {
                "uuid": gpu_uuid,
                "index": d.parent_index if d.is_mig else d.index,
                "model": d.model,
                "mig": d.is_mig,
                "devices": [],
            }
        reasons = [_redacted(r, may_read) for r in quarantine.get(d.uuid, ())]
        gpu["devices"].append(
            {
                "uuid": d.uuid,
                "kind": "mig" if d.is_mig else "gpu",
                "mig_profile": d.mig_profile,
                "holder": _holder(holders.get(d.uuid), servers, may_read),
                "telemetry": telemetry.get(d.uuid),
                "quarantine": reasons,
                "liftable": bool(reasons) and liftable(d.uuid),
            }
        )
    return list(gpus.values())


def _holder(lease: Lease | None, servers: Mapping[str, Any], may_read: Callable[[str], bool]) -> dict | None:
    if lease is None:
        return None
    user, _, server = lease.owner.partition("/")
    if not may_read(user):
        return {"hidden": True}
    info = servers.get(lease.owner)
    return {
        "user": user,
        "server": server,
        "profile": getattr(info, "profile", None) or None,
        "since": iso(getattr(info, "started", None)),
        "charged_to": lease.charged_to,
    }


def queue_rows(
    waiters: Iterable[Waiter],
    position: Callable[[str], tuple[int, int] | None],
    now: float,
    may_read: Callable[[str], bool],
) -> list[dict[str, Any]]:
    """The waiters the caller may read, in queue order; `position` among those waiting for the same kind."""
    rows = []
    for w in waiters:
        user, _, server = w.owner.partition("/")
        if not may_read(user):
            continue
        pos = position(w.owner)
        rows.append(
            {
                "user": user,
                "server": server,
                "position": pos[0] if pos else None,
                "count": w.request.count,
                "mig_profile": w.request.mig_profile,
                "model": w.request.model,
                "charged_to": w.charged_to,
                "priority": w.priority,
                "since": iso(w.since) if w.since else None,
                "waited_s": max(0, round(now - w.since)) if w.since else None,
            }
        )
    return rows


# --- quotas and budgets -------------------------------------------------------------------------------


def group_quota_row(
    name: str,
    members: int,
    configured: Mapping[str, Any] | None,
    runtime: Any,
    editable: bool,
) -> tuple[dict[str, Any], quota.Quota | None]:
    """One group's row (without budgets) and its effective quota (None if it sets none or is malformed)."""
    problems = []
    try:
        effective = quota.group_quota(name, configured, runtime)
    except quota.QuotaError as e:
        problems.append(str(e))
        effective = None
    row = {
        "name": name,
        "members": members,
        "config": dict(configured) if configured is not None else None,
        "properties": runtime,
        "effective": quota.written_quota(effective) if effective is not None else None,
        "problems": problems,
        "editable": editable,
        "budgets": {},
    }
    return row, effective


def budget_windows(q: quota.Quota, now: float) -> dict[str, tuple[budget.Budget, float, float]]:
    """scope -> (budget, window start, refill time) for the budgets a quota sets."""
    return {scope: (b, *budget.window(b.period, now)) for scope, b in q.budgets.items()}


def budgets_json(
    windows: Mapping[str, tuple[budget.Budget, float, float]],
    group_used: float | None,
    members: Iterable[str],
    member_used: Mapping[str, float] | None,
) -> dict[str, Any]:
    """A group's `budgets` object: the group's use, and each member's (0 for those who used none).

    None for a use means it is unknown (usage records off): its `used_hours` are null.
    """
    out: dict[str, Any] = {}
    if "group" in windows:
        b, _, refill = windows["group"]
        out["group"] = {
            "budget": quota.written({"gpu_hours_per_group": b})["gpu_hours_per_group"],
            "used_hours": None if group_used is None else round(group_used, 4),
            "refills_at": iso(refill),
        }
    if "user" in windows:
        b, _, refill = windows["user"]
        out["user"] = {
            "budget": quota.written({"gpu_hours_per_user": b})["gpu_hours_per_user"],
            "refills_at": iso(refill),
            "members": sorted(
                (
                    {"user": u, "used_hours": None if member_used is None else round(member_used.get(u, 0.0), 4)}
                    for u in members
                ),
                key=lambda m: (-(m["used_hours"] or 0), m["user"]),
            ),
        }
    return out


_CONTAINER_OF = re.compile(r"^(container \S+ of )([^:/\s]+)(/[^:\s]*)?(:.*)$")


def _redacted(reason: str, may_read: Callable[[str], bool]) -> str:
    """A quarantine reason names the container's owner ("container ab12 of ann/: ..."): not to a caller
    who may not see ann's servers, as the holder itself is hidden from them."""
    m = _CONTAINER_OF.match(reason)
    if m is None or may_read(m.group(2)):
        return reason
    return f"{m.group(1)}another user{m.group(4)}"
