"""Staff roles (lab-admin, instructor-<course>) as JupyterHub's authenticator-managed roles, current at once.

Three moments keep them right, all through JupyterHub's ORM and `jupyterhub.roles` (no SQL of ours):

- hub start: `load_managed_roles()` returns lab-admin and one instructor role per course, and with
  `reset_managed_roles_on_startup` JupyterHub drops managed roles and assignments the courses no
  longer give (a course deleted while the hub was down, a hub switched to shared-password mode);
- sign-in: the auth model's `roles` are the user's own roles, derived afresh from the courses;
- while the hub runs: a flush of the hub's database session that creates, changes or deletes a
  group (a course, an instructor group) or creates, renames or deletes a user recomputes the
  instructor roles in the same transaction. So a course created or changed through the REST API
  or the CLI (`PUT /groups/course-<name>/properties`) has given or taken its instructors' roles
  when the call returns, and JupyterHub reads scopes from the roles at every request.

Why a flush event rather than a periodic reconcile: a reconcile leaves a window in which an
instructor taken off a course keeps its students' servers, and it reads every course at every tick
while nothing changes. The event runs only when groups or users change, commits (or rolls back)
with the change itself, and sees every writer of groups (REST API, admin page, `load_groups`)
without wrapping JupyterHub's handlers. Instructor groups need no event for membership changes:
the role is the group's, so joining or leaving the group gives or takes it by itself.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from jupyterhub import orm
from jupyterhub import roles as hub_roles
from jupyterhub.auth import Authenticator
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.github import GitHubOAuthenticator
from traitlets import Bool, Unicode, default

from . import courses, roles

_WATCHED = "gpuhub.staff_roles.watched"
_STALE = "gpuhub.staff_roles.stale"


def course_properties(db) -> dict[str, Any]:
    """Course group name -> its `gpuhub.course` property, for every course group of the hub."""
    found = {}
    for group in db.query(orm.Group).filter(orm.Group.name.startswith(courses.GROUP_PREFIX)):
        props = group.properties
        if isinstance(props, dict) and courses.PROPERTY in props:
            found[group.name] = props[courses.PROPERTY]
    return found


def wanted_instructor_roles(db, also_users: Iterable[str] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """The instructor roles the courses give now (see `roles.instructor_roles`).

    `also_users` count as existing users: someone signing in for the first time is not in the
    database yet when their auth model is made.
    """
    course_groups = course_properties(db)
    user_names, group_names = roles.named_instructors(course_groups)
    users = set(also_users) & user_names
    if user_names:
        users |= {name for (name,) in db.query(orm.User.name).filter(orm.User.name.in_(user_names))}
    groups = set()
    if group_names:
        groups = {name for (name,) in db.query(orm.Group.name).filter(orm.Group.name.in_(group_names))}
    return roles.instructor_roles(course_groups, users, groups)


def _replace(role: orm.Role, kind: str, wanted: list, log: logging.Logger) -> None:
    # Assigning through the relationship (not the association table) also updates the other side's
    # collections already loaded in the hub's session: the hub keeps its objects across commits
    # (expire_on_commit is off) and computes scopes from them.
    current = getattr(role, kind)
    if set(current) != set(wanted):
        gone = sorted(o.name for o in set(current) - set(wanted))
        new = sorted(o.name for o in set(wanted) - set(current))
        setattr(role, kind, wanted)
        log.info("Role %s: %s %s added, %s removed", role.name, kind, new or "none", gone or "none")


def apply_instructor_roles(db, wanted: list[dict[str, Any]], log: logging.Logger) -> None:
    """Make the hub's managed instructor roles exactly `wanted` (new, changed, members, deleted). No commit."""
    names = {spec["name"] for spec in wanted}
    stale = db.query(orm.Role).filter(
        orm.Role.managed_by_auth.is_(True), orm.Role.name.startswith(roles.INSTRUCTOR_PREFIX)
    )
    for role in [r for r in stale if r.name not in names]:
        # Emptied before deletion so that users and groups already loaded drop it from their
        # roles now; deleting alone would leave it there, in memory, until the hub restarts.
        _replace(role, "users", [], log)
        _replace(role, "groups", [], log)
        db.delete(role)
        log.info("Role %s deleted: its course is gone or names no known instructor", role.name)
    for spec in wanted:
        defined = {k: spec[k] for k in ("name", "description", "scopes")}
        role = hub_roles.create_role(db, {**defined, "managed_by_auth": True}, commit=False)
        users = db.query(orm.User).filter(orm.User.name.in_(spec["users"])).all() if spec["users"] else []
        groups = db.query(orm.Group).filter(orm.Group.name.in_(spec["groups"])).all() if spec["groups"] else []
        _replace(role, "users", users, log)
        _replace(role, "groups", groups, log)


def sync_instructor_roles(db, log: logging.Logger) -> None:
    wanted, problems = wanted_instructor_roles(db)
    for problem in problems:
        log.warning("gpuhub: course ignored for instructor roles: %s", problem)
    apply_instructor_roles(db, wanted, log)


def _changed(obj: Any, attr: str) -> bool:
    return sa.inspect(obj).attrs[attr].history.has_changes()


def touches_courses(session) -> bool:
    """Whether a flush about to happen may change which instructor roles the courses give."""
    for obj in itertools.chain(session.new, session.deleted):
        if isinstance(obj, (orm.Group, orm.User)):
            return True
    for obj in session.dirty:
        # Only a course's own properties name instructors; quota edits on other groups do not.
        course = isinstance(obj, orm.Group) and (obj.name or "").startswith(courses.GROUP_PREFIX)
        if isinstance(obj, orm.Group) and ((course and _changed(obj, "properties")) or _changed(obj, "name")):
            return True
        if isinstance(obj, orm.User) and _changed(obj, "name"):
            return True
    return False


def watch(db, log: logging.Logger) -> None:
    """Keep instructor roles in step with the courses on every flush of `db` (the hub's session). Idempotent."""
    if db.info.get(_WATCHED):
        return
    db.info[_WATCHED] = True
    db.info[_STALE] = False

    def note(session, flush_context, instances):
        if not session.info[_STALE] and touches_courses(session):
            session.info[_STALE] = True

    def follow(session, flush_context):
        # After the flush the database holds the change, so plain queries see it (a query
        # before it would miss new and deleted groups). Changes made here are flushed by the
        # commit that is under way, in the same transaction, before it returns.
        if session.info[_STALE]:
            session.info[_STALE] = False
            sync_instructor_roles(session, log)

    sa.event.listen(db, "before_flush", note)
    sa.event.listen(db, "after_flush_postexec", follow)


class StaffRoles(Authenticator):
    """Mixin for an Authenticator: gpuhub's lab-admin and instructor roles as managed roles.

    Turns on `manage_roles` and `reset_managed_roles_on_startup`: the roles these give are all
    the staff roles there are. `load_roles` may then still define roles for services (the idle
    culler) but not give roles to users or groups.
    """

    give_staff_roles = Bool(
        True,
        config=True,
        help="""Give the lab-admin and instructor roles.

        False: give none, and remove at hub start any that an earlier run gave (every managed
        role), e.g. when a hub that used GitHub or OIDC sign-in moves to a shared password, where
        anyone may sign in under any name. Added in gpuhub 0.1.
        """,
    )

    lab_admin_group = Unicode(
        "lab-admins",
        config=True,
        help="""The group whose members get the `lab-admin` role (GPUHUB_LAB_ADMIN_GROUP).

        The group is created at hub start if missing; its members usually come from the
        identity provider (`manage_groups`). Example: `uni:hpc-staff` with GitHub teams.
        Added in gpuhub 0.1.
        """,
    )

    @default("manage_roles")
    def _manage_roles_default(self) -> bool:
        return True

    @default("reset_managed_roles_on_startup")
    def _reset_managed_roles_default(self) -> bool:
        return True

    @property
    def hub_db(self):
        # The hub's own session, not a connection of our own: the roles must change in the
        # transactions that change the courses, and the hub's objects must see them at once.
        return self.parent.db

    def get_handlers(self, app):
        # Not sign-in: JupyterHub matches the authenticator's handlers before its own, and gpuhub
        # needs to see who stops a server (spawner/stop_reasons.py).
        from . import stop_reasons

        return list(super().get_handlers(app)) + stop_reasons.handlers()

    async def load_managed_roles(self) -> list[dict[str, Any]]:
        # Admins hold their identity in every mode (the admin password in shared-password mode).
        admins = set(self.admin_users) | {u.name for u in self.hub_db.query(orm.User).filter(orm.User.admin)}
        admin_extra = [roles.admin_extra_role(admins)]
        if not self.give_staff_roles:
            return admin_extra
        # The first call the hub makes on its authenticator once the database is open, before
        # it serves a request: the place to start following changes.
        watch(self.hub_db, self.log)
        wanted, problems = wanted_instructor_roles(self.hub_db)
        for problem in problems:
            self.log.warning("gpuhub: course ignored for instructor roles: %s", problem)
        # `users: []`: lab-admin comes with the group only, never by name.
        return [{**roles.lab_admin_role(self.lab_admin_group), "users": []}] + admin_extra + wanted

    def roles_at_sign_in(self, username: str, admin: bool | None) -> list[dict[str, Any]]:
        db = self.hub_db
        if admin is None:  # the hub keeps the admin flag it has (JupyterHub's auth_to_user)
            user = orm.User.find(db, username)
            admin = bool(user and user.admin)
        defaults = {
            r.name: {"name": r.name, "description": r.description, "scopes": list(r.scopes)}
            for r in db.query(orm.Role).filter(orm.Role.name.in_(["user", "admin"]))
        }
        wanted, _ = wanted_instructor_roles(db, also_users=[username])
        return roles.login_roles(username, admin, defaults, wanted)

    async def run_post_auth_hook(self, handler, auth_model: dict[str, Any]) -> dict[str, Any]:
        auth_model = await super().run_post_auth_hook(handler, auth_model)
        if self.give_staff_roles and self.manage_roles:
            auth_model["roles"] = self.roles_at_sign_in(auth_model["name"], auth_model.get("admin"))
        return auth_model


class OIDCAuthenticator(StaffRoles, GenericOAuthenticator):
    """GenericOAuthenticator (GPUHUB_AUTH=oidc) with gpuhub's staff roles."""


class GitHubAuthenticator(StaffRoles, GitHubOAuthenticator):
    """GitHubOAuthenticator (GPUHUB_AUTH=github) with gpuhub's staff roles."""


class SharedPasswordStaffless(StaffRoles, SharedPasswordAuthenticator):
    """SharedPasswordAuthenticator: anyone may take any name, so no staff roles, and none left over."""

    @default("give_staff_roles")
    def _no_staff_roles(self) -> bool:
        return False


AUTHENTICATORS: dict[str, type[StaffRoles]] = {
    "generic-oauth": OIDCAuthenticator,
    "github": GitHubAuthenticator,
    "shared-password": SharedPasswordStaffless,
}
