"""Courses end to end: real hub, real Docker, real git (a `git daemon` on the test network)."""

import json
import socket
import subprocess
import sys
import time

import pytest
import requests

from harness.hub import SHARED_PASSWORD, TEST_GATEWAY, user_container
from spawner import courses

from .browser import sign_in_with_password, wait_for_lab
from .denials import DENIED
from .oidc import oidc_hub, sign_in_at_provider


def NB(text):  # noqa: N802 - a tiny notebook
    cells = [{"cell_type": "markdown", "metadata": {}, "source": text}]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def git(*args, cwd):
    subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
            "HOME": str(cwd),
            "PATH": "/usr/bin:/bin",
        },
    )


@pytest.fixture(scope="module")
def git_server(tmp_path_factory, test_network):
    """A bare repo served by a real `git daemon` where containers reach it (the network's gateway)."""
    root = tmp_path_factory.mktemp("git")
    bare, work = root / "ml101.git", root / "work"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=root)
    git("clone", "-q", str(bare), str(work), cwd=root)
    (work / "lecture1.ipynb").write_text(NB("lecture 1, version 1"))
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "lecture 1", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    with socket.socket() as s:
        s.bind((TEST_GATEWAY, 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={root}",
            f"--listen={TEST_GATEWAY}",
            f"--port={port}",
            str(root),
        ]
    )
    time.sleep(1)
    yield {"url": f"git://{TEST_GATEWAY}:{port}/ml101.git", "work": work}
    daemon.terminate()


def cli(hub, *args):
    env = {"GPUHUB_URL": hub.url, "GPUHUB_TOKEN": hub.token, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "spawner.cli", *args], capture_output=True, text=True, env=env)


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def container(docker_client, user):
    found = user_container(docker_client, user)
    assert found, f"no running container for {user}"
    return found


def sh(docker_client, user, script):
    code, out = container(docker_client, user).exec_run(["bash", "-c", script], user="1000:100")
    return code, out.decode(errors="replace")


def restart(hub, user):
    if hub.user_model(user)["servers"]:
        hub.stop_server(user)
    hub.start_server(user)
    hub.wait_ready(user)


def test_git_course_arrives_and_a_students_edit_survives_the_instructors_update(hub, docker_client, git_server):
    ok(cli(hub, "course", "create", "gitml", "--title", "ML 101", "--git", git_server["url"]))
    hub.api("POST", "/users", json={"usernames": ["gpuhubt-gstudent"]})
    ok(cli(hub, "course", "enroll", "gitml", "gpuhubt-gstudent"))
    restart(hub, "gpuhubt-gstudent")
    code, out = sh(docker_client, "gpuhubt-gstudent", "cat ~/courses/gitml/lecture1.ipynb")
    assert code == 0 and "lecture 1, version 1" in out
    sh(docker_client, "gpuhubt-gstudent", 'echo \'{"my": "answers"}\' > ~/courses/gitml/lecture1.ipynb')

    work = git_server["work"]
    (work / "lecture1.ipynb").write_text(NB("lecture 1, version 2"))
    (work / "lecture2.ipynb").write_text(NB("lecture 2"))
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "week 2", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)

    restart(hub, "gpuhubt-gstudent")
    code, out = sh(
        docker_client,
        "gpuhubt-gstudent",
        "cat ~/courses/gitml/lecture2.ipynb; echo; cat ~/courses/gitml/lecture1.ipynb",
    )
    assert "lecture 2" in out, out
    assert '{"my": "answers"}' in out and "version 2" not in out.split("\n", 1)[1], out
    assert "gpuhub-course: gitml: git" in hub.log_tail(400)
    link = ok(cli(hub, "course", "link", "gitml", "lecture2.ipynb")).strip()
    assert link.startswith(f"{hub.url}/hub/user-redirect/git-pull?repo=git%3A%2F%2F")
    assert "urlpath=lab%2Ftree%2Fcourses%2Fgitml%2Flecture2.ipynb" in link and "targetPath=courses%2Fgitml" in link
    hub.stop_server("gpuhubt-gstudent")


def test_an_unreachable_repository_never_keeps_the_server_from_starting(hub, docker_client):
    ok(cli(hub, "course", "create", "offline", "--git", f"git://{TEST_GATEWAY}:1/none.git"))
    hub.api("POST", "/users", json={"usernames": ["gpuhubt-ostudent"]})
    ok(cli(hub, "course", "enroll", "offline", "gpuhubt-ostudent"))
    restart(hub, "gpuhubt-ostudent")
    code, out = sh(docker_client, "gpuhubt-ostudent", "cat ~/courses/offline/SYNC-PROBLEM.md")
    assert code == 0 and "could not be updated" in out
    assert "gpuhub-course: offline: sync failed" in hub.log_tail(400)
    hub.stop_server("gpuhubt-ostudent")


def test_volume_course_copies_keep_student_edits_and_put_updates_beside_them(hub, docker_client, tmp_path, test_image):
    material = tmp_path / "material"
    (material / "week1").mkdir(parents=True)
    (material / "week1" / "lab1.ipynb").write_text(NB("lab 1, version 1"))
    hub.api("POST", "/users", json={"usernames": ["gpuhubt-teacher", "gpuhubt-vstudent"]})
    ok(cli(hub, "course", "create", "volml", "--volume", "--instructor", "gpuhubt-teacher"))
    ok(cli(hub, "course", "enroll", "volml", "gpuhubt-vstudent", "gpuhubt-teacher"))
    published = ok(cli(hub, "course", "publish", "volml", str(material), "--image", test_image))
    assert "published 1 file(s)" in published
    restart(hub, "gpuhubt-teacher")
    code, out = sh(
        docker_client,
        "gpuhubt-teacher",
        "cat ~/courses-admin/volml/week1/lab1.ipynb && echo extra > ~/courses-admin/volml/week1/notes.md",
    )
    assert code == 0 and "version 1" in out, out
    restart(hub, "gpuhubt-vstudent")
    code, out = sh(docker_client, "gpuhubt-vstudent", "ls ~/courses/volml/week1; touch /opt/gpuhub/courses/volml/x")
    assert "lab1.ipynb" in out and "notes.md" in out and "Read-only file system" in out, out
    sh(docker_client, "gpuhubt-vstudent", "echo mine > ~/courses/volml/week1/lab1.ipynb")
    sh(docker_client, "gpuhubt-teacher", "echo '\"lab 1, version 2\"' > ~/courses-admin/volml/week1/lab1.ipynb")
    restart(hub, "gpuhubt-vstudent")
    code, out = sh(
        docker_client,
        "gpuhubt-vstudent",
        "cd ~/courses/volml; cat week1/lab1.ipynb; cat week1/lab1.updated-*.ipynb; cat README-updates.md",
    )
    lines = out.splitlines()
    assert lines[0] == "mine" and "version 2" in lines[1], out
    assert "your version is kept" in out
    for user in ("gpuhubt-teacher", "gpuhubt-vstudent"):
        hub.stop_server(user)


def test_only_enrolled_students_get_a_course_and_two_courses_give_both(hub, docker_client):
    hub.api("POST", "/users", json={"usernames": ["gpuhubt-none", "gpuhubt-both"]})
    ok(cli(hub, "course", "create", "alpha", "--volume"))
    ok(cli(hub, "course", "create", "beta", "--volume"))
    ok(cli(hub, "course", "enroll", "alpha", "gpuhubt-both"))
    ok(cli(hub, "course", "enroll", "beta", "gpuhubt-both"))
    restart(hub, "gpuhubt-none")
    restart(hub, "gpuhubt-both")
    assert sh(docker_client, "gpuhubt-none", "ls ~/courses /opt/gpuhub/courses")[0] != 0
    code, out = sh(docker_client, "gpuhubt-both", "ls ~/courses")
    assert code == 0 and out.split() == ["alpha", "beta"]
    mounts = {m["Destination"] for m in container(docker_client, "gpuhubt-none").attrs["Mounts"]}
    assert mounts == {"/home/jovyan"}
    assert "gpuhub-course-alpha" in str(container(docker_client, "gpuhubt-both").attrs["Mounts"])
    ok(cli(hub, "course", "drop", "beta", "gpuhubt-both"))
    assert "gpuhubt-both" not in ok(cli(hub, "course", "show", "beta"))
    for user in ("gpuhubt-none", "gpuhubt-both"):
        hub.stop_server(user)


@pytest.mark.parametrize(
    "args, words",
    [
        (["course", "create", "../etc", "--volume"], "course name '../etc'"),
        (["course", "create", "x;rm", "--volume"], "course name"),
        (["course", "create", "good", "--git", "git://h/r.git; rm -rf /"], "must be an http(s)://"),
        (["course", "create", "good", "--git", "https://h/r.git", "--branch", "../x"], "branch"),
        (["course", "create", "good", "--volume", "--instructor", "nobody-here"], "unknown user 'nobody-here'"),
        (["course", "create", "good"], "exactly one source"),
        (["course", "show", "no-such-course"], "unknown course 'no-such-course'"),
        (["course", "enroll", "no-such-course", "gpuhubt-x"], "unknown course"),
        (["course", "enroll", "alpha", "nobody-here"], "unknown user 'nobody-here'"),
        (["course", "enroll", "alpha", "Bad User"], "not a valid user name"),
        (["course", "delete", "alpha"], "--yes"),
        (["course", "publish", "alpha", "/no/such/dir"], "is not a directory"),
        (["course", "create", "alpha", "--volume"], "exists already"),
    ],
)
def test_the_cli_refuses_bad_input_with_one_line_and_changes_nothing(hub, args, words):
    cli(hub, "course", "create", "alpha", "--volume")  # may exist already
    before = hub.api("GET", "/groups").json()
    result = cli(hub, *args)
    assert result.returncode != 0
    assert words in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert hub.api("GET", "/groups").json() == before


def test_the_cli_lists_shows_and_deletes(hub):
    ok(cli(hub, "course", "create", "gamma", "--volume", "--title", "Gamma course", "--data"))
    assert "gamma" in ok(cli(hub, "course", "list")) and "Gamma course" in ok(cli(hub, "course", "list"))
    shown = ok(cli(hub, "course", "show", "gamma"))
    assert "volume gpuhub-course-gamma" in shown and "gpuhub-course-gamma-data" in shown
    ok(cli(hub, "course", "delete", "gamma", "--yes"))
    assert "gamma" not in ok(cli(hub, "course", "list"))


def test_the_course_folder_shows_in_jupyterlabs_file_browser(hub, browser_page, tmp_path, test_image):
    material = tmp_path / "material"
    material.mkdir()
    (material / "welcome.ipynb").write_text(NB("welcome to the browser course"))
    hub.api("POST", "/users", json={"usernames": ["gpuhubt-bstudent"]})
    ok(cli(hub, "course", "create", "webml", "--volume", "--title", "Web ML"))
    ok(cli(hub, "course", "publish", "webml", str(material), "--image", test_image))
    ok(cli(hub, "course", "enroll", "webml", "gpuhubt-bstudent"))

    page = browser_page
    sign_in_with_password(page, hub.url, "gpuhubt-bstudent", SHARED_PASSWORD)
    wait_for_lab(page, "gpuhubt-bstudent")
    listing = page.locator(".jp-DirListing-content")
    listing.get_by_text("courses", exact=True).dblclick()
    listing.get_by_text("webml", exact=True).dblclick()
    listing.get_by_text("welcome.ipynb", exact=True).wait_for()
    hub.stop_server("gpuhubt-bstudent")


@pytest.fixture
def staff_hub(tmp_path_factory, test_image, test_network, chp_on_path):
    """An `oidc`-mode hub (instructor roles need real identities), started once."""
    hub, provider = oidc_hub(tmp_path_factory.mktemp("instructors"), test_image)
    hub.start()
    yield hub
    hub.stop()
    provider.stop()


def test_an_instructor_gets_and_loses_their_course_role_at_once_without_a_hub_restart(staff_hub, browser_page):
    hub, page = staff_hub, browser_page
    teacher, pupil = "gpuhubt-teach", "gpuhubt-livepupil"  # the provider's gpuhubt-teach is in `instructors`
    pid = hub.proc.pid
    assert hub.api("POST", "/users", json={"usernames": [pupil]}).status_code == 201
    # The instructor is signed in (a browser session) and has a token before the course exists.
    sign_in_at_provider(page, hub.url, teacher, next_path="/hub/token")
    page.wait_for_url("**/hub/token")
    r = hub.api("POST", f"/users/{teacher}/tokens", json={"note": "test"})
    token = requests.Session()
    token.headers["Authorization"] = f"token {r.json()['token']}"
    pupil_model = f"{hub.url}/hub/api/users/{pupil}"

    def reach() -> tuple[int, int]:
        # no waiting and no retry: the answer right after the REST call returned
        return token.get(pupil_model, timeout=30).status_code, page.goto(pupil_model).status

    def refused(what: str) -> None:
        codes = reach()
        assert all(c in (403, 404) for c in codes), f"{what}: {codes}"
        DENIED.append(f"{what} -> {codes}")

    refused("instructor (token, browser) -> a student's model before any course")

    ok(cli(hub, "course", "create", "live", "--volume", "--title", "Live", "--instructor", teacher))
    ok(cli(hub, "course", "enroll", "live", pupil))
    assert reach() == (200, 200)
    assert "instructor-live" in hub.user_model(teacher)["roles"]

    course = {"title": "Live", "instructors": [], "source": {"volume": True}}
    assert hub.api("PUT", "/groups/course-live/properties", json={courses.PROPERTY: course}).ok
    refused("instructor taken off the course (token, browser) -> its student's model")
    assert "instructor-live" not in hub.user_model(teacher)["roles"]

    # An instructor group (here the provider's `instructors`): the role is the group's.
    course["instructors"] = ["group:instructors"]
    assert hub.api("PUT", "/groups/course-live/properties", json={courses.PROPERTY: course}).ok
    assert reach() == (200, 200)
    assert "instructor-live" in hub.api("GET", "/groups/instructors").json()["roles"]

    ok(cli(hub, "course", "delete", "live", "--yes"))
    refused("instructor of a deleted course (token, browser) -> its former student's model")
    assert "instructor-live" not in hub.api("GET", "/groups/instructors").json()["roles"]

    assert hub.proc.pid == pid and hub.proc.poll() is None  # the same hub process throughout
