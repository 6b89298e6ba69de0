import logging

import pytest
from jupyterhub import orm, scopes
from jupyterhub import roles as hub_roles
from jupyterhub.user import User
from traitlets import Any
from traitlets.config import Configurable

from spawner import courses, hub_api, roles, staff_roles

ML = {"title": "ML", "instructors": ["alice", "ghost", "group:ml-tas"], "source": {"volume": True}}
LOG = logging.getLogger("test")


def test_one_instructor_role_per_course_scoped_to_its_group():
    found, problems = roles.instructor_roles(
        {"course-ml101": ML, "course-bad": {"source": {"git": "nope"}}}, users={"alice"}, groups={"ml-tas"}
    )
    assert [r["name"] for r in found] == ["instructor-ml101"]
    role = found[0]
    assert role["users"] == ["alice"] and role["groups"] == ["ml-tas"]  # unknown 'ghost' left out
    filtered = [s for s in role["scopes"] if s != "admin-ui"]
    assert filtered and all(s.endswith("!group=course-ml101") for s in filtered)
    # never group membership or properties: that would reach any user's server
    assert not any(s.split("!")[0] in {"groups", "admin:groups", "users", "admin:users"} for s in role["scopes"])
    assert problems and "course 'bad'" in problems[0]


def test_a_course_without_known_instructors_gets_no_role():
    assert roles.instructor_roles({"course-ml101": ML}, users=set(), groups=set()) == ([], [])


def test_lab_admin_manages_groups_and_servers_but_is_not_admin():
    role = roles.lab_admin_role("lab-admins")
    assert role["groups"] == ["lab-admins"]
    assert {"groups", "admin:groups", "admin:servers", "read:metrics"} <= set(role["scopes"])
    assert not {"admin:users", "users", "tokens", "admin:auth_state", "shutdown", "proxy"} & set(role["scopes"])


def test_named_instructors_are_those_of_valid_courses_only():
    bad = {"instructors": ["mallory"], "source": {"git": "nope"}}
    assert roles.named_instructors({"course-ml101": ML, "course-bad": bad}) == ({"alice", "ghost"}, {"ml-tas"})


def test_the_roles_at_sign_in_keep_user_and_admin_and_add_only_the_courses_naming_the_user():
    defaults = {n: {"name": n, "description": n, "scopes": [n]} for n in ("user", "admin")}
    found, _ = roles.instructor_roles(
        {"course-ml101": ML, "course-cv": {"instructors": ["bob"], "source": {"volume": True}}},
        users={"alice", "bob"},
        groups={"ml-tas"},
    )
    assert [r["name"] for r in roles.login_roles("alice", False, defaults, found)] == ["user", "instructor-ml101"]
    assert [r["name"] for r in roles.login_roles("bob", True, defaults, found)] == [
        "user",
        "admin",
        roles.ADMIN_EXTRA,  # gpuhub's scopes, which JupyterHub's admin role cannot be given
        "instructor-cv",
    ]
    # a `users` list would make JupyterHub reset the role's other instructors to it
    assert all(set(r) == {"name", "description", "scopes"} for r in roles.login_roles("alice", True, defaults, found))


# --- the hub's database, through JupyterHub's own ORM (an in-memory SQLite, no hub process) ---


def hub_db():
    """A hub database as JupyterHub leaves it after start, followed like the hub's own session.

    Made in the thread that uses it: an in-memory SQLite database is one per thread, and async
    tests run in a thread of their own (conftest).
    """
    scopes.define_custom_scopes(hub_api.CUSTOM_SCOPES)  # as the hub does at start (c.JupyterHub.custom_scopes)
    session = orm.new_session_factory("sqlite://")()
    for spec in hub_roles.get_default_roles():
        hub_roles.create_role(session, spec, commit=False)
    session.commit()
    staff_roles.watch(session, LOG)
    return session


@pytest.fixture
def db():
    session = hub_db()
    yield session
    session.close()


def add(db, *objects):
    for o in objects:
        db.add(o)
    db.commit()
    return objects


def set_course(db, group: orm.Group, course: dict | None) -> None:
    # what PUT /hub/api/groups/<name>/properties does
    group.properties = {courses.PROPERTY: course} if course is not None else {}
    db.commit()


def scopes_of(user: orm.User) -> set:
    return set(scopes.get_scopes_for(user))


def test_a_course_given_instructors_gives_them_the_role_in_the_same_commit_and_takes_it_back(db):
    alice, pupil = orm.User(name="alice"), orm.User(name="pupil")
    course = orm.Group(name="course-ml101", users=[pupil])
    add(db, alice, pupil, course)
    assert not any("group=course-ml101" in s for s in scopes_of(alice))

    set_course(db, course, {"instructors": ["alice"], "source": {"volume": True}})
    role = orm.Role.find(db, "instructor-ml101")
    assert role.managed_by_auth and [u.name for u in role.users] == ["alice"]
    assert "read:users!group=course-ml101" in scopes_of(alice)

    set_course(db, course, {"instructors": [], "source": {"volume": True}})
    assert orm.Role.find(db, "instructor-ml101") is None
    # the hub's loaded objects drop it too (the hub never expires them)
    assert "instructor-ml101" not in {r.name for r in alice.roles}
    assert not any("group=course-ml101" in s for s in scopes_of(alice))


def test_instructors_not_yet_known_get_the_role_when_they_appear_and_it_goes_with_the_course(db):
    course = orm.Group(name="course-ml101")
    add(db, course)
    set_course(db, course, ML)
    assert orm.Role.find(db, "instructor-ml101") is None  # nobody it names exists yet

    add(db, orm.User(name="ghost"))
    assert [u.name for u in orm.Role.find(db, "instructor-ml101").users] == ["ghost"]
    tas = orm.Group(name="ml-tas", users=[orm.User(name="ta")])
    add(db, tas)
    assert [g.name for g in orm.Role.find(db, "instructor-ml101").groups] == ["ml-tas"]
    ta = orm.User.find(db, "ta")
    assert "access:servers!group=course-ml101" in scopes_of(ta)
    tas.users = []  # leaving the instructor group is leaving the role
    db.commit()
    assert not any("group=course-ml101" in s for s in scopes_of(ta))

    db.delete(course)
    db.commit()
    assert orm.Role.find(db, "instructor-ml101") is None


def test_a_broken_course_gives_no_role_and_breaks_nothing(db, caplog):
    alice = orm.User(name="alice")
    course = orm.Group(name="course-ml101")
    add(db, alice, course)
    set_course(db, course, {"instructors": ["alice"], "source": {"volume": True}})
    with caplog.at_level(logging.WARNING):
        set_course(db, course, {"instructors": "alice"})
    assert orm.Role.find(db, "instructor-ml101") is None
    assert "course ignored for instructor roles" in caplog.text


def test_other_flushes_leave_instructor_roles_alone(db, monkeypatch):
    alice, course = orm.User(name="alice"), orm.Group(name="course-ml101")
    add(db, alice, course)
    calls = []
    monkeypatch.setattr(staff_roles, "sync_instructor_roles", lambda *a: calls.append(a))
    alice.admin = True  # e.g. the admin flag or activity
    course.users.append(alice)  # enrolment: the role's group filter follows it by itself
    db.commit()
    assert calls == []
    set_course(db, course, {"instructors": ["alice"], "source": {"volume": True}})
    assert len(calls) == 1


class FakeHub(Configurable):
    db = Any()


def authenticator(db, **kwargs) -> staff_roles.StaffRoles:
    return staff_roles.OIDCAuthenticator(parent=FakeHub(db=db), **kwargs)


async def test_managed_roles_at_start_are_lab_admin_by_group_and_the_courses_instructor_roles():
    session = orm.new_session_factory("sqlite://")()
    course = orm.Group(name="course-ml101")
    add(session, orm.User(name="alice"), course)
    course.properties = {courses.PROPERTY: ML}
    session.commit()
    auth = authenticator(session, lab_admin_group="uni:hpc")
    assert auth.manage_roles and auth.reset_managed_roles_on_startup
    managed = await auth.load_managed_roles()
    assert [r["name"] for r in managed] == ["lab-admin", roles.ADMIN_EXTRA, "instructor-ml101"]
    assert managed[0]["groups"] == ["uni:hpc"] and managed[0]["users"] == []
    assert managed[1]["users"] == [] and managed[1]["scopes"] == roles.GPUHUB_ADMIN_SCOPES  # no admins yet
    assert managed[2]["users"] == ["alice"] and managed[2]["groups"] == []
    assert session.info.get("gpuhub.staff_roles.watched")  # changes are followed from now on


async def test_with_a_shared_password_no_staff_role_is_given_and_old_ones_are_removed_at_start():
    session = orm.new_session_factory("sqlite://")()
    auth = staff_roles.SharedPasswordStaffless(parent=FakeHub(db=session))
    assert auth.manage_roles and auth.reset_managed_roles_on_startup and not auth.give_staff_roles
    session.add(orm.User(name="boss", admin=True))
    session.commit()
    # Only the admins' gpuhub role: admins prove who they are with the admin password.
    assert await auth.load_managed_roles() == [roles.admin_extra_role(["boss"])]
    assert "roles" not in await auth.run_post_auth_hook(None, {"name": "alice", "admin": None})
    assert not session.info.get("gpuhub.staff_roles.watched")


async def test_signing_in_resyncs_the_users_own_roles_and_keeps_user_and_admin():
    db = hub_db()
    stale = hub_roles.create_role(db, {"name": "instructor-old", "scopes": ["read:users!group=course-old"]})
    alice, boss = orm.User(name="alice", roles=[stale]), orm.User(name="boss", admin=True)
    add(db, alice, boss)
    for u in (alice, boss):
        hub_roles.assign_default_roles(db, u)
    course = orm.Group(name="course-ml101")
    add(db, course)
    course.properties = {courses.PROPERTY: {"instructors": ["alice", "newbie"], "source": {"volume": True}}}
    db.commit()
    auth = authenticator(db)

    # what JupyterHub's login does with the auth model: User.sync_roles(auth_model["roles"])
    model = await auth.run_post_auth_hook(None, {"name": "alice", "admin": None})
    User(alice, settings={"config_role_names": []}).sync_roles(model["roles"])
    assert {r.name for r in alice.roles} == {"user", "instructor-ml101"}
    model = await auth.run_post_auth_hook(None, {"name": "boss", "admin": None})
    User(boss, settings={"config_role_names": []}).sync_roles(model["roles"])
    assert {r.name for r in boss.roles} == {"user", "admin", roles.ADMIN_EXTRA}
    # a first sign-in: not in the database yet, already named by a course
    model = await auth.run_post_auth_hook(None, {"name": "newbie", "admin": False})
    assert [r["name"] for r in model["roles"]] == ["user", "instructor-ml101"]


def test_every_sign_in_mode_keeps_its_authenticator_and_adds_staff_roles():
    from importlib.metadata import entry_points

    for name, cls in staff_roles.AUTHENTICATORS.items():
        (entry_point,) = entry_points(group="jupyterhub.authenticators", name=name)
        assert issubclass(cls, entry_point.load()) and issubclass(cls, staff_roles.StaffRoles), name
