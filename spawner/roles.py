"""gpuhub's roles (JupyterHub RBAC), as role specs (`load_roles` / `load_managed_roles` entries). Pure.

- `user` (JupyterHub's own, every signed-in user; "student" in the docs): their own servers only.
- `lab-admin`, for the members of GPUHUB_LAB_ADMIN_GROUP: groups and their properties (quotas,
  budgets, courses), every server, the admin page, metrics, GPU-hour usage and gpuhub's console
  (view and manage); not users, tokens or the hub itself.
- `instructor-<course>`, one per course, for its instructors (users and instructor groups):
  read the course's members and their servers, open and start/stop them (to help in class),
  read the course group, and gpuhub's console read-only (its rows cut to the course by the scopes
  above). Not its membership: a role that can add users to a group it can
  access would reach any user's server by enrolling them. Enrolment is the lab admins' or the IdP's.

`spawner/staff_roles.py` gives these roles to the hub (as authenticator-managed roles) and keeps
them in step with the courses while it runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from . import courses

LAB_ADMIN = "lab-admin"
# gpuhub's own scopes (defined in spawner/hub_api.py; docs/api.md says what each opens)
READ_USAGE = "custom:gpuhub:read-usage"  # every user's GPU-hour usage records
VIEW = "custom:gpuhub:view"  # the console and gpuhub's read endpoints, cut to what other scopes let one read
MANAGE = "custom:gpuhub:manage"  # lift a quarantine, remove a queue entry, edit a quota
GPUHUB_ADMIN_SCOPES = [VIEW, MANAGE, READ_USAGE]
# JupyterHub refuses to change its built-in admin role, which predates custom scopes: admins get
# gpuhub's in a role of their own.
ADMIN_EXTRA = "gpuhub-admin"
INSTRUCTOR_PREFIX = "instructor-"

LAB_ADMIN_SCOPES = [
    "admin-ui",
    "list:users",
    "read:users",
    "read:users:activity",
    "read:servers",
    "servers",
    "admin:servers",
    "access:servers",
    "list:groups",
    "read:groups",
    "groups",
    "admin:groups",
    "read:metrics",
    READ_USAGE,
    VIEW,
    MANAGE,
]


def lab_admin_role(group: str) -> dict[str, Any]:
    return {
        "name": LAB_ADMIN,
        "description": "Manage groups, quotas and courses, and every user's servers (not a full admin)",
        "scopes": list(LAB_ADMIN_SCOPES),
        "groups": [group],
    }


def admin_extra_role(users: Iterable[str]) -> dict[str, Any]:
    return {
        "name": ADMIN_EXTRA,
        "description": "gpuhub's console and GPU endpoints for JupyterHub's admins (their admin role lacks them)",
        "scopes": list(GPUHUB_ADMIN_SCOPES),
        "users": sorted(users),
    }


def instructor_scopes(course: str) -> list[str]:
    g = f"group={courses.GROUP_PREFIX}{course}"
    return [
        "admin-ui",
        f"list:users!{g}",
        f"read:users!{g}",
        f"read:users:activity!{g}",
        f"read:servers!{g}",
        f"servers!{g}",
        f"access:servers!{g}",
        f"list:groups!{g}",
        f"read:groups!{g}",
        f"{VIEW}!{g}",  # what it opens is cut by the scopes above anyway
    ]


def named_instructors(course_groups: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(user names, group names) that valid courses name as instructors, whether they exist or not.

    Lets a caller look up only these instead of every user of the hub.
    """
    users: set[str] = set()
    groups: set[str] = set()
    for group, value in course_groups.items():
        try:
            course = courses.parse(group, value)
        except courses.CourseError:
            continue
        users.update(course.instructors)
        groups.update(course.instructor_groups)
    return users, groups


def instructor_roles(
    course_groups: Mapping[str, Any], users: Iterable[str], groups: Iterable[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """One role per valid course; instructors that are not (yet) known users or groups are left out.

    Each role lists its `users` and `groups` exactly (an empty list means none), so applying it
    also takes the role from instructors no longer named. Returns (roles, problems) - problems
    are one-line notes for the hub log.
    """
    users, groups = set(users), set(groups)
    roles, problems = [], []
    for group, value in sorted(course_groups.items()):
        try:
            course = courses.parse(group, value)
        except courses.CourseError as e:
            problems.append(str(e))
            continue
        members = sorted(u for u in set(course.instructors) if u in users)
        member_groups = sorted(g for g in set(course.instructor_groups) if g in groups)
        if not members and not member_groups:
            continue
        roles.append(
            {
                "name": f"{INSTRUCTOR_PREFIX}{course.name}",
                "description": f"Instructor of {course.title}: see and help with the course's servers",
                "scopes": instructor_scopes(course.name),
                "users": members,
                "groups": member_groups,
            }
        )
    return roles, problems


def login_roles(
    username: str, admin: bool, defaults: Mapping[str, Mapping[str, Any]], instructor: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The roles a user signing in holds in their own name, for the auth model's `roles`.

    JupyterHub strips every role of the user that this list leaves out, its own `user` and
    `admin` included, so these come first (`defaults`: their specs as the hub has them). Only
    name, description and scopes are given: a `users` list here would reset the role's other
    members to it.
    """
    keep = ["user"] + (["admin"] if admin else [])
    found = [dict(defaults[name]) for name in keep if name in defaults]
    if admin:
        found.append({k: v for k, v in admin_extra_role([]).items() if k != "users"})
    for role in instructor:
        if username in role.get("users", ()):
            found.append({k: role[k] for k in ("name", "description", "scopes")})
    return found
