"""Courses: JupyterHub groups `course-<name>` whose property `gpuhub.course` describes them. Pure.

    PUT /hub/api/groups/course-ml101/properties
    {"gpuhub.course": {
        "title": "Machine Learning 101",
        "instructors": ["alice"],            # user names, and/or "group:<name>"
        "source": {"git": "https://git.example.edu/ml101.git", "branch": "main"}
                # or {"volume": true}: the Docker volume gpuhub-course-ml101
        "data": false,       # true: gpuhub-course-ml101-data, read-only, as ~/courses/ml101/data
        "profile": "mig-small"               # optional default profile for the course
    }}

For each course of a user, `plan()` says what their container gets: students get
the material synced into ~/courses/<name>/ at every start (by the image's start
hook, never overwriting their edits), instructors also mount the course volume
read-write at ~/courses-admin/<name>/.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROPERTY = "gpuhub.course"
GROUP_PREFIX = "course-"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$|^[a-z0-9]$")
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_GIT = re.compile(r"^(https?|git|ssh|file)://[^\s'\"`$;|&<>]+$")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
KEYS = {"title", "instructors", "source", "data", "profile"}
STAGING = "/opt/gpuhub/courses"  # where students' containers see the course volume (read-only)


class CourseError(ValueError):
    """A course definition or name is invalid; one line naming what."""


def check_name(name: str) -> str:
    """A course name usable in paths and Docker volume names (no traversal, no injection)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise CourseError(
            f"course name {name!r} must be 1-40 lower-case letters, digits and '-', starting and ending alphanumeric"
        )
    return name


def volume_name(name: str) -> str:
    return f"gpuhub-course-{check_name(name)}"


def data_volume_name(name: str) -> str:
    return f"gpuhub-course-{check_name(name)}-data"


@dataclass(frozen=True)
class Course:
    name: str
    title: str
    instructors: tuple[str, ...] = ()
    instructor_groups: tuple[str, ...] = ()
    git: str | None = None
    branch: str = "main"
    volume: bool = False
    data: bool = False
    profile: str | None = None

    def to_property(self) -> dict[str, Any]:
        source: dict[str, Any] = {"git": self.git, "branch": self.branch} if self.git else {"volume": True}
        return {
            "title": self.title,
            "instructors": list(self.instructors) + [f"group:{g}" for g in self.instructor_groups],
            "source": source,
            "data": self.data,
            **({"profile": self.profile} if self.profile else {}),
        }


def parse(group: str, value: Any) -> Course:
    """The course a group describes; raises CourseError naming the group and the problem."""
    if not group.startswith(GROUP_PREFIX):
        raise CourseError(f"group {group!r} is not a course group (course-<name>)")
    name = check_name(group[len(GROUP_PREFIX) :])
    where = f"course {name!r}"
    if not isinstance(value, Mapping):
        raise CourseError(f"{where}: property {PROPERTY!r} must be an object")
    unknown = set(value) - KEYS
    if unknown:
        raise CourseError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    title = value.get("title", name)
    if not isinstance(title, str) or len(title) > 200:
        raise CourseError(f"{where}: title must be text of at most 200 characters")
    users, groups = [], []
    instructors = value.get("instructors", [])
    if not isinstance(instructors, list):
        raise CourseError(f"{where}: instructors must be a list of user names or 'group:<name>'")
    for entry in instructors:
        if isinstance(entry, str) and entry.startswith("group:") and USER_NAME.match(entry[6:]):
            groups.append(entry[6:])
        elif isinstance(entry, str) and USER_NAME.match(entry):
            users.append(entry)
        else:
            raise CourseError(f"{where}: instructor {entry!r} is not a user name or 'group:<name>'")
    source = value.get("source", {"volume": True})
    if not isinstance(source, Mapping) or set(source) - {"git", "branch", "volume"}:
        raise CourseError(f"{where}: source must be {{'git': URL, 'branch': B}} or {{'volume': true}}")
    git = source.get("git")
    if git is not None and (not isinstance(git, str) or not _GIT.match(git)):
        raise CourseError(f"{where}: git source {git!r} must be an http(s)://, git://, ssh:// or file:// URL")
    branch = source.get("branch", "main")
    if not isinstance(branch, str) or not _BRANCH.match(branch) or ".." in branch:
        raise CourseError(f"{where}: branch {branch!r} is not a valid branch name")
    if git is None and source.get("volume") is not True:
        raise CourseError(f"{where}: source needs a git URL or volume: true")
    profile = value.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise CourseError(f"{where}: profile must be a profile slug")
    data = value.get("data", False)
    if not isinstance(data, bool):
        raise CourseError(f"{where}: data must be true or false")
    return Course(name, title, tuple(users), tuple(groups), git, branch, git is None, data, profile)


@dataclass(frozen=True)
class CoursePlan:
    """What one user's container gets for their courses."""

    binds: dict[str, dict[str, str]]
    sync: list[dict[str, Any]]  # for the image's start hook (GPUHUB_COURSES)
    problems: list[str]  # malformed course properties, for the hub log
    profile: str | None = None  # the first course's default profile


def plan(username: str, groups: Mapping[str, Mapping[str, Any]], *, home_path: str) -> CoursePlan:
    """Course mounts and sync tasks for `username`; `groups` maps each of their groups to its properties
    (course groups describe courses, any group may be a course's instructor group). `home_path` is
    where the user's home is mounted (`GPUDockerSpawner.home_path`)."""
    member_of = set(groups)
    binds: dict[str, dict[str, str]] = {}
    sync: list[dict[str, Any]] = []
    problems: list[str] = []
    profile = None
    for group in sorted(groups):
        props = groups[group] or {}
        if not group.startswith(GROUP_PREFIX) or PROPERTY not in props:
            continue
        try:
            course = parse(group, props[PROPERTY])
        except CourseError as e:
            problems.append(str(e))
            continue
        instructor = username in course.instructors or bool(member_of & set(course.instructor_groups))
        task: dict[str, Any] = {"name": course.name, "role": "instructor" if instructor else "student"}
        if course.git:
            task.update(git=course.git, branch=course.branch)
        else:
            task["volume"] = True
            if instructor:
                binds[volume_name(course.name)] = {
                    "bind": f"{home_path}/courses-admin/{course.name}",
                    "mode": "rw",
                }
            else:
                binds[volume_name(course.name)] = {"bind": f"{STAGING}/{course.name}", "mode": "ro"}
        if course.data:
            # Mounted beside the home's courses/ (Docker makes mount points root-owned);
            # the start hook links it in as ~/courses/<name>/data.
            binds[data_volume_name(course.name)] = {
                "bind": f"{home_path}/course-data/{course.name}",
                "mode": "rw" if instructor else "ro",
            }
            task["data"] = True
        sync.append(task)
        profile = profile or course.profile
    return CoursePlan(binds, sync, problems, profile)
