"""Admission: one spawn request in, one frozen spawn plan (or a refusal) out. Pure.

Everything a start depends on is decided here, from plain data: the server
options the user sent, the profiles, what the host can serve now, the quota
config and the user's groups (with their runtime properties), and how many
devices the user and each quota already hold or wait for. The GPU service runs
this and reserves the devices in the same event-loop step, so two starts can
never both pass a limit that only one of them fits (no `await` in between).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import courses, profiles, quota
from .devices import Request

#: Server options a user may send; anything else (GPU visibility, limits) is refused. DockerSpawner's
#: `image` option is resolved against `allowed_images` by the spawner before admission (`image=`).
USER_OPTIONS = frozenset({"profile"})


@dataclass(frozen=True)
class Usage:
    """Devices held or waited for, besides the server being admitted."""

    user: int = 0  # by all of this user's servers
    by_quota: Mapping[str, int] = field(default_factory=dict)  # by quota source (group name or "(default)")


@dataclass(frozen=True)
class SpawnPlan:
    """What one start will be; `create_object`, `get_env` and `progress` read only this."""

    profile: profiles.Profile
    image: str
    request: Request | None  # None: a CPU server
    charged_to: str  # the quota the devices count against
    priority: int  # the charged quota's queue priority
    courses: courses.CoursePlan
    problems: tuple[str, ...] = ()  # ignored malformed group properties, for the hub log

    @property
    def devices_needed(self) -> int:
        return self.request.count if self.request else 0


@dataclass(frozen=True)
class Refusal:
    status: int  # the HTTP status the hub answers with
    message: str


def devices_wanted(
    *,
    username: str,
    user_options: Mapping[str, Any],
    profile_list: Sequence[profiles.Profile],
    user_groups: Mapping[str, Mapping[str, Any] | None],
    home_path: str,
) -> int:
    """How many devices the profile `admit` will choose asks for (0 when the choice is refused there):
    what a GPU-hour budget must pay for, asked before the one-step admission."""
    slug = user_options.get("profile")
    if slug is not None and not isinstance(slug, str):
        return 0
    groups = {name: props or {} for name, props in user_groups.items()}
    course_plan = courses.plan(username, groups, home_path=home_path)
    try:
        return profiles.choose(profile_list, slug or course_plan.profile).device_count
    except profiles.ProfileError:
        return 0


def admit(
    *,
    username: str,
    user_options: Mapping[str, Any],
    profile_list: Sequence[profiles.Profile],
    default_image: str,
    home_path: str,
    quota_default: Mapping[str, Any],
    quota_groups: Mapping[str, Mapping[str, Any]],
    user_groups: Mapping[str, Mapping[str, Any] | None],
    usage: Usage,
    usable: Callable[[Request], int],
    image: str | None = None,
    exhausted: Mapping[str, str] | None = None,
) -> SpawnPlan | Refusal:
    """Decide one start. `image`: the image the user chose from DockerSpawner's `allowed_images`,
    which replaces the profile's. `user_groups` maps each of the user's groups to its properties;
    `usable(request)` says how many such devices the host can hand out at all now. `exhausted`: quota
    sources whose GPU-hour budget is used up, with the reason (`quota.decide`)."""
    unknown = set(user_options) - USER_OPTIONS
    if unknown:
        return Refusal(400, f"unknown server option(s): {', '.join(sorted(unknown))}")
    slug = user_options.get("profile")
    if slug is not None and not isinstance(slug, str):
        return Refusal(400, f"server option 'profile' must be a profile name, got {type(slug).__name__}")
    groups = {name: props or {} for name, props in user_groups.items()}
    course_plan = courses.plan(username, groups, home_path=home_path)
    try:
        profile = profiles.choose(profile_list, slug or course_plan.profile)
    except profiles.ProfileError as e:
        return Refusal(400, str(e))
    quotas, problems = quota.quotas_for(
        quota_default, quota_groups, {name: props.get(quota.PROPERTY) for name, props in groups.items()}
    )
    problems = tuple(course_plan.problems) + tuple(problems)
    if profile.gpu is not None:
        why = profiles.unservable(profile, usable(profile.gpu))
        if why:
            return Refusal(503, f"{why} that can be handed out now; ask a lab admin")
    decision = quota.decide(quotas, profile.slug, profile.device_count, usage.user, usage.by_quota, exhausted)
    if not decision.allowed:
        extra = f" (ignored: {'; '.join(problems)})" if problems else ""
        return Refusal(403, f"Over quota: {decision.reason}{extra}")
    return SpawnPlan(
        profile=profile,
        image=image or profile.image or default_image,
        request=profile.gpu,
        charged_to=decision.charged_to,
        priority=decision.priority,
        courses=course_plan,
        problems=problems,
    )


def offered(
    profile_list: Sequence[profiles.Profile],
    quota_default: Mapping[str, Any],
    quota_groups: Mapping[str, Mapping[str, Any]],
    user_groups: Mapping[str, Mapping[str, Any] | None],
    usable: Callable[[Request], int],
) -> list[profiles.Profile]:
    """The profiles the spawn form offers this user: allowed by a quota and servable on this host now."""
    quotas, _ = quota.quotas_for(
        quota_default, quota_groups, {name: (props or {}).get(quota.PROPERTY) for name, props in user_groups.items()}
    )
    return [
        p
        for p in profile_list
        if any(q.allows(p.slug) for q in quotas) and (p.gpu is None or usable(p.gpu) >= p.gpu.count)
    ]
