import re

import pytest

from spawner import courses, quota
from spawner.courses import CourseError

#: Not the image default, so a mount that ignores GPUDockerSpawner.home_path fails here.
HOME = "/home/student"

GIT = {
    "title": "ML 101",
    "instructors": ["alice", "group:ml101-tas"],
    "source": {"git": "https://git.example.edu/ml.git"},
}
VOLUME = {"title": "Vision", "instructors": ["vera"], "source": {"volume": True}, "data": True, "profile": "mig"}


def test_a_course_property_parses_and_round_trips():
    course = courses.parse("course-ml101", GIT)
    assert course.instructors == ("alice",) and course.instructor_groups == ("ml101-tas",)
    assert course.git == "https://git.example.edu/ml.git" and course.branch == "main" and not course.volume
    assert courses.parse("course-ml101", course.to_property()) == course


@pytest.mark.parametrize(
    "group, value, words",
    [
        ("course-../x", GIT, "course name"),
        ("course-ML", GIT, "course name"),
        ("students", GIT, "not a course group"),
        ("course-a", {**GIT, "source": {"git": "git://h/r.git; rm -rf /"}}, "must be an http(s)://"),
        ("course-a", {**GIT, "source": {"git": "https://h/r.git", "branch": "../../x"}}, "branch"),
        ("course-a", {**GIT, "source": {}}, "needs a git URL or volume"),
        ("course-a", {**GIT, "instructors": ["Bad Name"]}, "instructor 'Bad Name'"),
        ("course-a", {**GIT, "colour": 1}, "unknown keys colour"),
        ("course-a", {**GIT, "data": "yes"}, "data must be true or false"),
        ("course-a", "ml", "must be an object"),
    ],
)
def test_bad_course_definitions_are_named(group, value, words):
    with pytest.raises(CourseError, match=re.escape(words)):
        courses.parse(group, value)


def groups(**props):
    return {f"course-{k}": {courses.PROPERTY: v} for k, v in props.items()}


def test_a_student_gets_a_read_only_course_volume_outside_home_and_a_sync_task():
    plan = courses.plan("bob", {**groups(vision=VOLUME, ml101=GIT), "students": {}}, home_path=HOME)
    assert plan.binds["gpuhub-course-vision"] == {"bind": "/opt/gpuhub/courses/vision", "mode": "ro"}
    assert plan.binds["gpuhub-course-vision-data"] == {"bind": f"{HOME}/course-data/vision", "mode": "ro"}
    assert plan.sync == [
        {"name": "ml101", "role": "student", "git": "https://git.example.edu/ml.git", "branch": "main"},
        {"name": "vision", "role": "student", "volume": True, "data": True},
    ]
    assert plan.profile == "mig" and plan.problems == []


def test_an_instructor_mounts_the_course_volume_read_write_in_courses_admin():
    plan = courses.plan("vera", groups(vision=VOLUME), home_path=HOME)
    assert plan.binds["gpuhub-course-vision"] == {"bind": f"{HOME}/courses-admin/vision", "mode": "rw"}
    assert plan.sync[0]["role"] == "instructor"


def test_members_of_an_instructor_group_are_instructors():
    assert courses.plan("tim", {**groups(ml101=GIT), "ml101-tas": {}}, home_path=HOME).sync[0]["role"] == "instructor"


def test_a_broken_course_is_reported_and_skipped_not_fatal():
    plan = courses.plan("bob", groups(ok=VOLUME, bad={"source": {"git": "ftp://x"}}), home_path=HOME)
    assert [t["name"] for t in plan.sync] == ["ok"]
    assert len(plan.problems) == 1 and "course 'bad'" in plan.problems[0]


def test_groups_that_are_not_courses_give_nothing():
    plan = courses.plan("bob", {"students": {quota.PROPERTY: {}}, "course-x": {}}, home_path=HOME)
    assert plan == courses.CoursePlan({}, [], [])


@pytest.mark.parametrize("name", ["a", "ml101", "deep-learning-2026"])
def test_volume_names_follow_the_course_name(name):
    assert courses.volume_name(name) == f"gpuhub-course-{name}"


@pytest.mark.parametrize("name", ["", "-x", "x-", "a/b", "a b", "x" * 41, "..", "a_b"])
def test_unsafe_course_names_are_refused(name):
    with pytest.raises(CourseError):
        courses.volume_name(name)
