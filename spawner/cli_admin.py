"""`gpuhub gpus|queue|quota|usage|stop`: the lab admin's console on the command line, over the hub's
`/hub/api/gpuhub/...` endpoints (docs/api.md). Rendering is pure (functions `render_*`), so the
tables are unit-tested without a hub; the hub validates every write (one schema: `quota.parse`).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from . import courses, quota
from .cli_client import CLIError, Hub, path_part
from .cli_table import EMPTY, age, csv_text, duration, gib, hours, parse_time, table

SERVER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
QUOTA_KEYS = quota.KEYS  # the spawner's one schema
WHOLE_NUMBER_KEYS = ("max_devices_per_user", "max_devices_per_group", "priority")
BUDGET_KEYS = ("gpu_hours_per_user", "gpu_hours_per_group")
NO_LIMIT = ("none", "null", "unlimited")  # `key=none`: an explicit "no limit", overriding the config
QUOTA_SOURCES = ("effective", "config", "properties")  # a malformed property may be any JSON: shown as unset
USAGE_BREAKDOWNS = ("user", "group", "profile", "device", "model", "reason")


def server_spec(text: str) -> tuple[str, str]:
    """ "ann" -> ("ann", ""), "ann/train" -> ("ann", "train"); a malformed name is one line."""
    user, _, server = text.partition("/")
    if not courses.USER_NAME.match(user):
        raise CLIError(f"{user!r} is not a valid user name (give USER or USER/SERVER)")
    if "/" in text and not SERVER_NAME.match(server):
        raise CLIError(f"{server!r} is not a valid server name (give USER or USER/SERVER)")
    return user, server


def server_path(user: str, server: str) -> str:
    return path_part(user) + (f"/{path_part(server)}" if server else "")


def server_label(user: str, server: str) -> str:
    return f"{user}'s server" + (f" {server!r}" if server else "")


def dump(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=False)


# --- gpuhub gpus -----------------------------------------------------------------------------------


def _holder(holder: Mapping | None) -> tuple[str, str, str | None]:
    """(who, profile, since) of a device's holder."""
    if holder is None:
        return "free", EMPTY, None
    if holder.get("hidden"):
        return "(hidden)", EMPTY, None
    who = holder.get("user", "?") + (f"/{holder['server']}" if holder.get("server") else "")
    return who, holder.get("profile") or EMPTY, holder.get("since")


def _activity(t: Mapping | None) -> tuple[str, list[str]]:
    """The ACTIVITY cell and the notes that explain it."""
    if t is None:
        return EMPTY, []  # no sample yet
    notes = []
    if not t.get("ok", True):
        notes.append(f"telemetry error: {t.get('error') or 'unknown'}")
    if t.get("activity") is not None:
        return f"{t['activity']:.0f}%", notes
    if t.get("no_activity_reason"):
        notes.append(f"no activity figure: {t['no_activity_reason']}")
    if t.get("utilization") is not None:
        return f"util {t['utilization']:.0f}%", notes
    return "n/a", notes


def _memory(t: Mapping | None) -> str:
    if not t or t.get("memory_used") is None or not t.get("memory_total"):
        return EMPTY
    return f"{gib(t['memory_used'])}/{gib(t['memory_total'])} GiB"


def render_gpus(doc: Mapping, now: datetime) -> str:
    """Every device grouped under its physical GPU, and a count of free, held and quarantined."""
    rows = []
    counts = {"free": 0, "held": 0, "quarantined": 0}
    for gpu in doc.get("gpus", []):
        for i, device in enumerate(gpu.get("devices", [])):
            who, profile, since = _holder(device.get("holder"))
            activity, notes = _activity(device.get("telemetry"))
            reasons = [str(r) for r in device.get("quarantine") or []]
            if reasons:
                counts["quarantined"] += 1
                who = "(quarantined)" if device.get("holder") is None else who
                lift = f" (lift: gpuhub gpus lift {device.get('uuid')})" if device.get("liftable") else ""
                notes.insert(0, f"quarantined: {'; '.join(reasons)}{lift}")
            else:
                counts["free" if device.get("holder") is None else "held"] += 1
            kind = device.get("mig_profile") or device.get("kind") or "gpu"
            rows.append(
                [
                    gpu.get("index") if i == 0 else "",
                    gpu.get("model") if i == 0 else "",
                    device.get("uuid"),
                    kind,
                    who,
                    profile,
                    age(since, now) if since else EMPTY,
                    activity,
                    _memory(device.get("telemetry")),
                    "; ".join(notes),
                ]
            )
    if not rows:
        return "no GPU devices (CPU-only host, or no GPU inventory configured)"
    headers = ["GPU", "MODEL", "DEVICE", "KIND", "HOLDER", "PROFILE", "SINCE", "ACTIVITY", "MEMORY", "NOTES"]
    summary = ", ".join(f"{n} {what}" for what, n in counts.items())
    return f"{table(headers, rows)}\n\n{len(rows)} device(s): {summary}"


def cmd_gpus(hub: Hub, a) -> str:
    doc = hub.get("/gpuhub/devices")
    return dump(doc) if a.json else render_gpus(doc, datetime.now(timezone.utc))


def cmd_lift(hub: Hub, a) -> str:
    if not re.match(r"^(GPU|MIG)-[A-Za-z0-9-]{1,80}$", a.uuid):
        raise CLIError(f"{a.uuid!r} is not a device UUID (GPU-... or MIG-..., as `gpuhub gpus` lists them)")
    device = hub.call("POST", f"/gpuhub/devices/{a.uuid}/lift").json()
    return dump(device) if a.json else f"lifted the quarantine of {a.uuid}: it is given out again"


# --- gpuhub queue ----------------------------------------------------------------------------------


def _wants(entry: Mapping) -> str:
    what = entry.get("mig_profile") or "GPU"
    model = f" ({entry['model']})" if entry.get("model") else ""
    return f"{entry.get('count', 1)} x {what}{model}"


def render_queue(doc: Mapping) -> str:
    entries = doc.get("queue", [])
    if not entries:
        return "nobody is waiting for a GPU"
    rows = [
        [
            e.get("position"),
            e.get("user"),
            e.get("server") or None,
            _wants(e),
            e.get("charged_to"),
            e.get("priority"),
            duration(e.get("waited_s")),
        ]
        for e in entries
    ]
    return table(["POS", "USER", "SERVER", "WANTS", "CHARGED TO", "PRIORITY", "WAITING"], rows)


def cmd_queue(hub: Hub, a) -> str:
    doc = hub.get("/gpuhub/queue")
    return dump(doc) if a.json else render_queue(doc)


def cmd_queue_remove(hub: Hub, a) -> str:
    user, server = server_spec(a.who)
    hub.call("DELETE", f"/gpuhub/queue/{server_path(user, server)}")
    return "" if a.json else f"removed {server_label(user, server)} from the GPU queue (its start fails)"


# --- gpuhub quota ----------------------------------------------------------------------------------


def quota_value(value: Any) -> str:
    """A quota value as `quota set` takes it back: profiles as cpu,mig; no limit as none."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _shown(mapping: Mapping | None, key: str) -> str:
    return quota_value(mapping[key]) if mapping and key in mapping else EMPTY


def quota_changes(assignments: Sequence[str]) -> dict[str, Any]:
    """`key=value` arguments -> {key: JSON value}; `key=` (empty) -> {key: UNSET}.

    Only the syntax is checked here; the values are the hub's to validate (the one schema), so a
    misspelt key or a bad number comes back as the hub's one-line 400.
    """
    if not assignments:
        raise CLIError("give at least one key=value (keys: " + ", ".join(QUOTA_KEYS) + ")")
    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"{item!r} is not key=value (keys: {', '.join(QUOTA_KEYS)}; key= unsets)")
        if key in changes:
            raise CLIError(f"{key} is given twice")
        changes[key] = _quota_json(key, raw.strip())
    return changes


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


def _quota_json(key: str, raw: str) -> Any:
    if raw == "":
        return UNSET
    if key == "profiles":
        return "*" if raw == "*" else [p.strip() for p in raw.split(",") if p.strip()]
    if key in WHOLE_NUMBER_KEYS + BUDGET_KEYS and raw.lower() in NO_LIMIT:
        return None
    if key in WHOLE_NUMBER_KEYS and re.fullmatch(r"[+-]?\d+", raw):
        return int(raw)
    return raw


def apply_changes(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The group's new `gpuhub` property: the current one with the named keys set or removed."""
    new = dict(current)
    for key, value in changes.items():
        if value is UNSET:
            new.pop(key, None)
        else:
            new[key] = value
    return new


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """ "max_devices_per_user 2 -> 1; priority - -> 5" ("-": not set in the group property)."""
    keys = [k for k in dict.fromkeys(list(old) + list(new)) if old.get(k, UNSET) != new.get(k, UNSET)]
    return "; ".join(f"{k} {_shown(old, k)} -> {_shown(new, k)}" for k in keys)


def _budget_cell(budgets: Mapping | None, scope: str, effective: Mapping) -> str:
    key = f"gpu_hours_per_{scope}"
    b = (budgets or {}).get(scope)
    if scope == "group" and b and b.get("used_hours") is not None:
        return f"{hours(b['used_hours'])} of {b.get('budget')}"
    return _shown(effective, key)


def render_quotas(doc: Mapping) -> str:
    default = doc.get("default") or {}
    rows = [["(default)", EMPTY] + [_shown(default, k) for k in QUOTA_KEYS] + ["everyone"]]
    for g in doc.get("groups", []):
        eff = g.get("effective") or {}
        notes = [f"PROBLEM: {p}" for p in g.get("problems") or []]
        if g.get("properties"):
            notes.append("set at runtime")
        if g.get("editable") is False:
            notes.append("read-only for you")
        row = [g.get("name"), g.get("members")] + [_shown(eff, k) for k in QUOTA_KEYS[:4]]
        row += [_budget_cell(g.get("budgets"), "user", eff), _budget_cell(g.get("budgets"), "group", eff)]
        rows.append(row + ["; ".join(notes)])
    headers = ["GROUP", "MEMBERS", "PROFILES", "PER USER", "PER GROUP", "PRIORITY", "GPU-H/USER", "GPU-H/GROUP"]
    return table(headers + ["NOTES"], rows)


def render_quota(group: Mapping, audit: Sequence[Mapping]) -> str:
    """One group: each key with where it comes from, its budgets, problems and recent changes."""
    eff, config, props = (group.get(k) if isinstance(group.get(k), Mapping) else {} for k in QUOTA_SOURCES)
    out = [f"{group.get('name')}: {group.get('members', '?')} member(s)"]
    rows = [[k, _shown(eff, k), _shown(props, k), _shown(config, k)] for k in QUOTA_KEYS]
    out.append(table(["KEY", "EFFECTIVE", "SET AT RUNTIME", "CONFIG"], rows))
    budgets = group.get("budgets") or {}
    if budgets.get("group"):
        b = budgets["group"]
        out.append(
            f"group budget {b.get('budget')}: {hours(b.get('used_hours'))} GPU-hours used, "
            f"refills {_when(b.get('refills_at'))}"
        )
    if budgets.get("user"):
        b = budgets["user"]
        members = sorted(b.get("members") or [], key=lambda m: -(m.get("used_hours") or 0))
        top = ", ".join(f"{m.get('user')} {hours(m.get('used_hours'))}" for m in members[:5]) or "nobody yet"
        out.append(f"user budget {b.get('budget')} each, refills {_when(b.get('refills_at'))}; most used: {top}")
    for problem in group.get("problems") or []:
        out.append(f"PROBLEM: {problem} (this group grants nothing until it is fixed)")
    if audit:
        out.append("recent changes:")
        for entry in audit:
            change = describe_change(entry.get("old") or {}, entry.get("new") or {}) or "no change"
            out.append(f"  {_when(entry.get('at'))}  {entry.get('who')}  {change}")
    return "\n".join(out)


def _when(text: str | None) -> str:
    moment = parse_time(text)
    return EMPTY if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _find_group(doc: Mapping, name: str) -> Mapping | None:
    return next((g for g in doc.get("groups", []) if g.get("name") == name), None)


def _check_group_name(name: str) -> None:
    if not re.match(r"^[^/\s]{1,255}$", name):
        raise CLIError(f"{name!r} is not a valid group name")


def cmd_quota_show(hub: Hub, a) -> str:
    doc = hub.get("/gpuhub/quotas")
    if not a.group:
        return dump(doc) if a.json else render_quotas(doc)
    _check_group_name(a.group)
    group = _find_group(doc, a.group)
    if group is None:
        raise CLIError(f"unknown group {a.group!r} (or one you may not read)")
    if a.json:
        return dump(group)
    audit = hub.get("/gpuhub/audit", group=a.group, limit=5).get("entries", [])
    return render_quota(group, audit)


def cmd_quota_set(hub: Hub, a) -> str:
    _check_group_name(a.group)
    changes = quota_changes(a.assignments)
    # Read, change the named keys, write the whole property back: the PUT replaces it.
    listed = _find_group(hub.get("/gpuhub/quotas"), a.group)
    props = (listed or {}).get("properties")
    current = dict(props) if isinstance(props, dict) else {}  # a malformed property is replaced whole
    new = apply_changes(current, changes)
    if new == current and listed is not None:
        return "" if a.json else f"{a.group}: no change"
    # An unlisted group is either unknown (the hub answers 404) or has no quota of its own yet.
    group = hub.call("PUT", f"/gpuhub/quotas/{path_part(a.group)}", json=new).json()
    if a.json:
        return dump(group)
    return f"{a.group}: {describe_change(current, new) or 'no change'} (applies from the next start)"


# --- gpuhub usage ----------------------------------------------------------------------------------


def _reasons(row: Mapping) -> str:
    by_reason = row.get("by_reason") or {}
    return ", ".join(f"{r} {hours(h)}" for r, h in sorted(by_reason.items(), key=lambda kv: -kv[1]))


def render_usage(doc: Mapping) -> str:
    by = doc.get("by", "user")
    head = f"GPU-hours by {by}, {_when(doc.get('since'))} to {_when(doc.get('until'))}"
    rows = doc.get("rows") or []
    if not rows:
        return f"{head}\nno GPU use in this period"
    lines = [[r.get("key"), hours(r.get("gpu_hours")), r.get("leases"), _reasons(r)] for r in rows]
    lines.append(["total", hours(sum(r.get("gpu_hours") or 0 for r in rows)), EMPTY, ""])
    unit = doc.get("unit") or "device-hours"
    return f"{head}, in {unit}\n" + table([by.upper(), "GPU-HOURS", "LEASES", "BY END REASON"], lines)


def usage_csv(doc: Mapping) -> str:
    """One row per key: its hours, leases and hours per end reason (`hours_<reason>` columns)."""
    rows = doc.get("rows") or []
    reasons = sorted({r for row in rows for r in row.get("by_reason") or {}})
    headers = [doc.get("by", "key"), "gpu_hours", "leases"] + [f"hours_{r}" for r in reasons]
    body = [
        [row.get("key"), row.get("gpu_hours"), row.get("leases")]
        + [(row.get("by_reason") or {}).get(r, 0) for r in reasons]
        for row in rows
    ]
    return csv_text(headers, body)


def cmd_usage(hub: Hub, a) -> str:
    doc = hub.get(
        "/gpuhub/usage",
        since=a.since,
        until=a.until,
        by=a.by,
        user=a.user,
        group=a.group,
        profile=a.profile,
        device=a.device,
    )
    if a.json:
        return dump(doc)
    return usage_csv(doc) if a.csv else render_usage(doc)


# --- gpuhub stop -----------------------------------------------------------------------------------


def cmd_stop(hub: Hub, a) -> str:
    user, server = server_spec(a.who)
    r = hub.call("DELETE", f"/gpuhub/servers/{server_path(user, server)}", ok=(200, 202, 204, 404), timeout=120)
    if r.status_code == 404:
        raise CLIError(f"{user} has no running server" + (f" named {server!r}" if server else ""))
    return "" if a.json else f"stopped {server_label(user, server)} (its files are kept)"


# --- arguments -------------------------------------------------------------------------------------


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """`common` holds --url/--token/--json, so they may come after the command too."""
    g = sub.add_parser("gpus", parents=[common], help="the GPU map: every GPU and MIG slice, its holder and activity")
    g.set_defaults(func=cmd_gpus)
    gs = g.add_subparsers(dest="gpus_command", metavar="[lift UUID]")
    lift = gs.add_parser("lift", parents=[common], help="lift a device's quarantine once its cause is fixed")
    lift.add_argument("uuid", help="the device's UUID, as `gpuhub gpus` lists it")
    lift.set_defaults(func=cmd_lift)

    q = sub.add_parser("queue", parents=[common], help="who waits for a GPU, in which order, for how long")
    q.set_defaults(func=cmd_queue)
    qs = q.add_subparsers(dest="queue_command", metavar="[remove USER[/SERVER]]")
    rm = qs.add_parser("remove", parents=[common], help="take a waiter out of the queue (its start fails)")
    rm.add_argument("who", metavar="USER[/SERVER]")
    rm.set_defaults(func=cmd_queue_remove)

    quota = sub.add_parser("quota", help="group quotas and GPU-hour budgets")
    qa = quota.add_subparsers(dest="quota_command", required=True, metavar="show|set")
    show = qa.add_parser("show", parents=[common], help="every group's quota, or one group's in detail")
    show.add_argument("group", nargs="?", default="")
    show.set_defaults(func=cmd_quota_show)
    s = qa.add_parser(
        "set",
        parents=[common],
        help="change keys of a group's quota: profiles=cpu,mig max_devices_per_user=1 gpu_hours_per_user=20/week",
        description="Keys: " + ", ".join(QUOTA_KEYS) + ". key= removes the key (the config's value applies "
        "again); key=none sets no limit. Takes effect at each member's next start.",
    )
    s.add_argument("group")
    s.add_argument("assignments", nargs="*", metavar="key=value")
    s.set_defaults(func=cmd_quota_set)

    u = sub.add_parser("usage", parents=[common], help="GPU-hours over a period, by user, group, profile, ...")
    u.add_argument("--since", help="start: 7d, 12h, or a date such as 2026-11-01 (default: 30 days ago)")
    u.add_argument("--until", help="end, as --since (default: now)")
    u.add_argument("--by", default="user", choices=USAGE_BREAKDOWNS)
    for name in ("user", "group", "profile", "device"):
        u.add_argument(f"--{name}", help=f"only this {name}" + (" (charged to)" if name == "group" else ""))
    u.add_argument("--csv", action="store_true", help="CSV for a spreadsheet")
    u.set_defaults(func=cmd_usage)

    st = sub.add_parser("stop", parents=[common], help="stop a user's server (their files are kept)")
    st.add_argument("who", metavar="USER[/SERVER]")
    st.set_defaults(func=cmd_stop)
