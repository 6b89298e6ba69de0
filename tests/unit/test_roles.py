import json

import sqlalchemy as sa

from spawner import roles

ML = {"title": "ML", "instructors": ["alice", "ghost", "group:ml-tas"], "source": {"volume": True}}


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


def test_read_courses_from_a_hub_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    assert roles.read_courses(url) == ({}, set(), set())  # a first start: no tables yet
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(sa.text("CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT, properties TEXT)"))
        conn.execute(sa.text("INSERT INTO users (name) VALUES ('alice'), ('bob')"))
        rows = [
            ("course-ml101", json.dumps({"gpuhub.course": ML})),
            ("students", json.dumps({"gpuhub": {}})),
            ("x", None),
        ]
        for name, props in rows:
            conn.execute(sa.text("INSERT INTO groups (name, properties) VALUES (:n, :p)"), {"n": name, "p": props})
    engine.dispose()
    found, users, groups = roles.read_courses(url)
    assert found == {"course-ml101": ML} and users == {"alice", "bob"} and groups == {"course-ml101", "students", "x"}
