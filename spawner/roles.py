"""gpuhub's roles (JupyterHub RBAC), as `load_roles` entries. Pure but for `read_courses`.

- `user` (JupyterHub's own, every signed-in user; "student" in README): their own servers only.
- `lab-admin`, for the members of GPUHUB_LAB_ADMIN_GROUP: groups and their properties (quotas,
  courses), every server, the admin page and metrics; not users, tokens or the hub itself.
- `instructor-<course>`, one per course, for its instructors (users and instructor groups):
  read the course's members and their servers, open and start/stop them (to help in class),
  read the course group. Not its membership: a role that can add users to a group it can
  access would reach any user's server by enrolling them. Enrolment is the lab admins' or the IdP's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from . import courses

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
]


def lab_admin_role(group: str) -> dict[str, Any]:
    return {
        "name": "lab-admin",
        "description": "Manage groups, quotas and courses, and every user's servers (not a full admin)",
        "scopes": list(LAB_ADMIN_SCOPES),
        "groups": [group],
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
    ]


def instructor_roles(
    course_groups: Mapping[str, Any], users: Iterable[str], groups: Iterable[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """One role per valid course; instructors that are not (yet) known users or groups are left out.

    Returns (roles, problems) - problems are one-line notes for the hub log.
    """
    users, groups = set(users), set(groups)
    roles, problems = [], []
    for group, value in sorted(course_groups.items()):
        try:
            course = courses.parse(group, value)
        except courses.CourseError as e:
            problems.append(str(e))
            continue
        members = [u for u in course.instructors if u in users]
        member_groups = [g for g in course.instructor_groups if g in groups]
        if not members and not member_groups:
            continue
        roles.append(
            {
                "name": f"instructor-{course.name}",
                "description": f"Instructor of {course.title}: see and help with the course's servers",
                "scopes": instructor_scopes(course.name),
                "users": members,
                "groups": member_groups,
            }
        )
    return roles, problems


def read_courses(db_url: str) -> tuple[dict[str, Any], set[str], set[str]]:
    """(course group -> its gpuhub.course property, user names, group names) from the hub database.

    Read at hub start, before JupyterHub loads roles; an empty or new database gives nothing.
    """
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if not {"users", "groups"} <= tables:
                return {}, set(), set()
            users = {row[0] for row in conn.execute(sa.text("SELECT name FROM users"))}
            found, groups = {}, set()
            for name, props in conn.execute(sa.text("SELECT name, properties FROM groups")):
                groups.add(name)
                if not name.startswith(courses.GROUP_PREFIX) or not props:
                    continue
                props = json.loads(props) if isinstance(props, str) else props
                if isinstance(props, dict) and courses.PROPERTY in props:
                    found[name] = props[courses.PROPERTY]
            return found, users, groups
    finally:
        engine.dispose()
