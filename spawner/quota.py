"""Who may use what. Pure: the spawner feeds in config, group properties and usage.

A quota is a mapping with any of these keys:

    profiles               list of profile slugs this quota allows ("*" for all)
    max_devices_per_user   devices one user may hold at once, over all their servers
    max_devices_per_group  devices all members together may hold through this group
    priority               place in the GPU wait queue (higher goes first)
    gpu_hours_per_user     GPU-hour budget of each member, e.g. "20/week" (see spawner/budget.py)
    gpu_hours_per_group    GPU-hour budget of all members together, e.g. "500/month"

Where quotas come from, for one user:
1. `c.GPUQuota.default` applies to everyone.
2. Each of the user's groups that has a quota in `c.GPUQuota.groups` or in its
   JupyterHub group properties under `gpuhub` (set at runtime by lab admins through
   `PUT /hub/api/gpuhub/quotas/{name}`, which checks and records them). Properties override
   config key by key.

How several quotas combine: a user may start a profile if *any* of their quotas
allows it. The spawn is charged to an allowing quota with room left (groups before
the default, then the highest priority, then the most room, then by name;
a quota whose GPU-hour budget is used up is not charged),
and queues at that quota's priority; the user's own limit is the largest `max_devices_per_user` among the
quotas that allow the profile. A group's `max_devices_per_group` counts the devices held by
all servers charged to that group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from traitlets import Dict
from traitlets.config import Configurable

from . import budget

DEFAULT_SOURCE = "(default)"
PROPERTY = "gpuhub"  # the JupyterHub group property lab admins set quotas under
KEYS = (
    "profiles",
    "max_devices_per_user",
    "max_devices_per_group",
    "priority",
    "gpu_hours_per_user",
    "gpu_hours_per_group",
)


class QuotaError(ValueError):
    """A quota value is malformed; one line naming where and what."""


@dataclass(frozen=True)
class Quota:
    source: str  # group name, or "(default)"
    profiles: frozenset[str] | None = None  # None: every profile
    max_devices_per_user: int | None = None  # None: no limit
    max_devices_per_group: int | None = None
    priority: int = 0
    gpu_hours_per_user: budget.Budget | None = None
    gpu_hours_per_group: budget.Budget | None = None

    @property
    def budgets(self) -> dict[str, budget.Budget]:
        """scope ("user"/"group") -> budget, for the budgets this quota sets."""
        found = {"user": self.gpu_hours_per_user, "group": self.gpu_hours_per_group}
        return {scope: b for scope, b in found.items() if b is not None}

    def allows(self, slug: str) -> bool:
        return self.profiles is None or slug in self.profiles


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    charged_to: str = ""
    priority: int = 0


def parse(value: Any, source: str) -> dict[str, Any]:
    """Validate one quota mapping; returns only the keys it sets."""
    if not isinstance(value, Mapping):
        raise QuotaError(f"quota of {source} must be a mapping, got {type(value).__name__}")
    unknown = set(value) - set(KEYS)
    if unknown:
        raise QuotaError(f"quota of {source} has unknown keys: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    if "profiles" in value:
        profiles = value["profiles"]
        if profiles == "*" or profiles is None:
            out["profiles"] = None
        elif isinstance(profiles, list) and all(isinstance(p, str) for p in profiles):
            out["profiles"] = frozenset(profiles)
        else:
            raise QuotaError(f"quota of {source}: profiles must be a list of profile slugs or '*'")
    for key in ("max_devices_per_user", "max_devices_per_group"):
        if key in value:
            n = value[key]
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
                raise QuotaError(f"quota of {source}: {key} must be a whole number >= 0 or null, got {n!r}")
            out[key] = n
    if "priority" in value:
        p = value["priority"]
        if not isinstance(p, int) or isinstance(p, bool) or not -1000 <= p <= 1000:
            raise QuotaError(f"quota of {source}: priority must be a whole number from -1000 to 1000")
        out["priority"] = p
    for key in ("gpu_hours_per_user", "gpu_hours_per_group"):
        if key in value:
            try:
                out[key] = None if value[key] is None else budget.parse(value[key], f"quota of {source}: {key}")
            except budget.BudgetError as e:
                raise QuotaError(str(e)) from None
    return out


def quotas_for(
    default: Mapping[str, Any],
    config_groups: Mapping[str, Mapping[str, Any]],
    user_groups: Mapping[str, Mapping[str, Any] | None],
) -> tuple[list[Quota], list[str]]:
    """The quotas that apply to a user, and one-line problems with malformed group properties.

    `user_groups` maps each of the user's group names to that group's `gpuhub`
    property (None if unset). A group whose property is malformed grants nothing
    until it is fixed: a typo must never hand out more than an admin meant.
    """
    quotas = [Quota(DEFAULT_SOURCE, **parse(default, "c.GPUQuota.default"))]
    problems: list[str] = []
    for name in sorted(user_groups):
        try:
            found = group_quota(name, config_groups.get(name), user_groups[name])
        except QuotaError as e:
            problems.append(str(e))
            continue
        if found is not None:
            quotas.append(found)
    return quotas, problems


def group_quota(name: str, configured: Mapping[str, Any] | None, runtime: Any) -> Quota | None:
    """One group's quota: its config, overridden key by key by its property `gpuhub` (None if neither is set).

    Raises QuotaError when either is malformed: such a group grants nothing until it is fixed.
    """
    if configured is None and runtime is None:
        return None
    values = parse(configured or {}, f"c.GPUQuota.groups[{name!r}]")
    if runtime is not None:
        values.update(parse(runtime, f"group {name!r} (property 'gpuhub')"))
    return Quota(name, **values)


def written(values: Mapping[str, Any]) -> dict[str, Any]:
    """Parsed quota values (`parse`'s answer, or a Quota's fields) as an admin writes them:
    profiles a sorted list or "*", budgets "20/week". `parse(written(v))` gives `v` back."""
    out: dict[str, Any] = {}
    for key in KEYS:
        if key not in values:
            continue
        value = values[key]
        if key == "profiles":
            value = "*" if value is None else sorted(value)
        elif isinstance(value, budget.Budget):
            value = f"{_plain(value.hours)}/{value.period}"
        out[key] = value
    return out


def written_quota(q: Quota) -> dict[str, Any]:
    """Every key of a quota, as written (keys it does not set show their meaning: null, 0, "*")."""
    return written({key: getattr(q, key) for key in KEYS})


def decide(
    quotas: Iterable[Quota],
    slug: str,
    devices: int,
    user_holds: int,
    group_holds: Mapping[str, int],
    exhausted: Mapping[str, str] | None = None,
) -> Decision:
    """May a user holding `user_holds` devices start profile `slug` needing `devices` more?

    `exhausted` maps quota sources whose GPU-hour budget is used up to the one-line reason
    (`budget.Use.refusal`): such a quota is not charged for GPU devices.
    """
    exhausted = exhausted or {}
    allowing = [q for q in quotas if q.allows(slug)]
    if not allowing:
        return Decision(False, f"your quota does not include the profile {slug!r}")
    if devices == 0:
        best = max(allowing, key=lambda q: q.priority)
        return Decision(True, charged_to=best.source, priority=best.priority)
    user_limits = [q.max_devices_per_user for q in allowing]
    user_limit = None if None in user_limits else max(user_limits)
    if user_limit is not None and user_holds + devices > user_limit:
        return Decision(
            False,
            f"you hold {user_holds} GPU device(s); this profile needs {devices} more and your limit is {user_limit}",
        )

    def room(q: Quota) -> float:
        if q.max_devices_per_group is None:
            return float("inf")
        return q.max_devices_per_group - group_holds.get(q.source, 0) - devices

    with_budget = [q for q in allowing if q.source not in exhausted]
    if not with_budget:
        return Decision(False, "; ".join(dict.fromkeys(exhausted[q.source] for q in allowing)))
    candidates = [q for q in with_budget if room(q) >= 0]
    # A group before the default, the highest priority first, then the most room: a researcher
    # uses the researchers' quota while it has room and falls back to the students' only when full.
    groups_first = sorted(candidates, key=lambda q: (q.source == DEFAULT_SOURCE, -q.priority, -room(q), q.source))
    if not groups_first:
        full = ", ".join(
            f"{q.source} ({group_holds.get(q.source, 0)} of {q.max_devices_per_group} in use)" for q in with_budget
        )
        return Decision(False, f"group GPU limit reached: {full}")
    # The queue priority is the charged quota's: a researcher charged to the students'
    # group because their own group is full queues like a student.
    charged = groups_first[0]
    return Decision(True, charged_to=charged.source, priority=charged.priority)


def _plain(number: float) -> str:
    """20.0 -> "20", 0.015 -> "0.015", 1e-07 -> "0.0000001": what the budget pattern reads back."""
    text = f"{Decimal(repr(number)):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


class GPUQuota(Configurable):
    """GPU quotas in config; lab admins override them per group at runtime (group property `gpuhub`)."""

    default = Dict(
        help="""
        The quota everyone has, e.g. `{"profiles": ["cpu", "mig-small"], "max_devices_per_user": 1}`.
        Empty (the default) allows every profile without limits: set it on shared hosts.
        Keys: profiles, max_devices_per_user, max_devices_per_group, priority,
        gpu_hours_per_user, gpu_hours_per_group (GPU-hour budgets such as "20/week").
        """,
    ).tag(config=True)

    groups = Dict(
        help="""
        Quotas per JupyterHub group name, e.g.
        `{"students": {"profiles": ["cpu", "mig-small"], "max_devices_per_user": 1,
        "max_devices_per_group": 20}, "researchers": {"profiles": "*", "max_devices_per_user": 4,
        "priority": 10}}`. A group's property `gpuhub` overrides these key by key at runtime.
        """,
    ).tag(config=True)
