"""Usage and budget figures as the console shows and exports them. Pure.

The hub's usage answer (`GET /hub/api/gpuhub/usage`, docs/api.md) has one row per key:
`{"key", "gpu_hours", "leases", "by_reason": {reason: hours}}`, the most hours first.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

from .. import budget, usage
from ..cli_table import csv_cell

BREAKDOWNS = ("user", "group", "profile", "device", "model", "reason")
CULLED = "gpu-idle"  # the end reason of servers stopped by GPU-idle culling
_STILL = {usage.RUNNING: "still running: counted up to now"}


class ReportError(ValueError):
    """A report request is malformed; one line naming what."""


def check_breakdown(by: str | None) -> str:
    if by in (None, ""):
        return "user"
    if by not in BREAKDOWNS:
        raise ReportError(f"by must be one of {', '.join(BREAKDOWNS)}, got {by!r}")
    return by


def bars(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One bar per row: its hours and its length relative to the longest (0..100), in the rows' order."""
    rows = list(rows)
    longest = max((float(r.get("gpu_hours") or 0) for r in rows), default=0.0)
    return [
        {
            "key": str(r.get("key", "")),
            "gpu_hours": round(float(r.get("gpu_hours") or 0), 4),
            "percent": round(100 * float(r.get("gpu_hours") or 0) / longest, 1) if longest > 0 else 0.0,
            "by_reason": dict(r.get("by_reason") or {}),
        }
        for r in rows
    ]


def end_reasons(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """GPU-hours per end reason over all rows (open rows under "running"), the most first, with the
    words the hub uses for each reason."""
    total: dict[str, float] = {}
    for r in rows:
        for reason, hours in (r.get("by_reason") or {}).items():
            total[reason] = total.get(reason, 0.0) + float(hours or 0)
    return [
        {
            "reason": reason,
            "gpu_hours": round(hours, 4),
            "meaning": usage.END_REASONS.get(reason, _STILL.get(reason, reason)),
        }
        for reason, hours in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def taken_back_by_culling(rows: Iterable[Mapping[str, Any]]) -> float:
    """GPU-hours of servers that GPU-idle culling stopped: what culling gave back to the queue."""
    return round(sum(float((r.get("by_reason") or {}).get(CULLED, 0) or 0) for r in rows), 4)


def _limit(written: Any) -> float | None:
    try:
        return budget.parse(written, "budget").hours
    except budget.BudgetError:
        return None


def budgets(quotas: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every GPU-hour budget of the hub's quota answer as flat rows: group, scope ("group" or "user"),
    user, the budget as written, used, left and when it refills."""
    found = []
    for group in quotas.get("groups") or []:
        spent = group.get("budgets") or {}
        whole = spent.get("group")
        if whole:
            limit = _limit(whole.get("budget"))
            used = _hours(whole.get("used_hours"))
            found.append(_budget_row(group["name"], "group", "", whole, used, limit))
        each = spent.get("user")
        if each:
            limit = _limit(each.get("budget"))
            for member in each.get("members") or []:
                used = _hours(member.get("used_hours"))
                found.append(_budget_row(group["name"], "user", member.get("user", ""), each, used, limit))
    return found


def _hours(value: Any) -> float | None:
    """The hub's used hours; None where it could not read them (usage records off or unreachable)."""
    return None if value is None else float(value)


def _budget_row(group: str, scope: str, user: str, spec: Mapping[str, Any], used: float | None, limit: float | None):
    known = used is not None and limit is not None
    return {
        "group": group,
        "scope": scope,
        "user": user,
        "budget": spec.get("budget"),
        "used_hours": None if used is None else round(used, 4),  # unknown is not "nothing used"
        "left_hours": round(max(0.0, limit - used), 4) if known else None,
        "percent_used": round(min(100.0, 100 * used / limit), 1) if known and limit else None,
        "refills_at": spec.get("refills_at"),
    }


def usage_csv(answer: Mapping[str, Any]) -> str:
    """The usage answer as CSV: the breakdown key, GPU-hours, leases and one column per end reason."""
    rows = answer.get("rows") or []
    reasons = sorted({reason for r in rows for reason in (r.get("by_reason") or {})})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([answer.get("by") or "key", "gpu_hours", "leases", "since", "until", *reasons])
    for r in rows:
        by_reason = r.get("by_reason") or {}
        writer.writerow(
            [
                csv_cell(r.get("key")),
                f"{float(r.get('gpu_hours') or 0):.4f}",
                r.get("leases", ""),
                answer.get("since") or "",
                answer.get("until") or "",
                *(f"{float(by_reason.get(reason, 0)):.4f}" for reason in reasons),
            ]
        )
    return out.getvalue()


def device_summary(devices: Mapping[str, Any]) -> dict[str, int]:
    """Counts over the hub's device answer: physical GPUs, allocatable devices (GPUs or MIG slices),
    held, free and quarantined ones."""
    summary = {"gpus": 0, "devices": 0, "held": 0, "free": 0, "quarantined": 0}
    for gpu in devices.get("gpus") or []:
        summary["gpus"] += 1
        for device in gpu.get("devices") or []:
            summary["devices"] += 1
            if device.get("quarantine"):
                summary["quarantined"] += 1
            elif device.get("holder"):
                summary["held"] += 1
            else:
                summary["free"] += 1
    return summary
