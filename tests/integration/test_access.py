"""Tokens, roles and cross-user attempts against a real hub. Every attempt that must be
refused is recorded with `denied()`; the run's summary counts them (conftest)."""

from __future__ import annotations

import time

import pytest
import requests

from harness.hub import SHARED_PASSWORD, TEST_GATEWAY, TEST_NETWORK, user_container
from spawner import courses, quota

from .browser import sign_in_with_password, wait_for_lab
from .denials import DENIED
from .oidc import oidc_hub, sign_in_at_provider

STUDENT, OTHER = "gpuhubt-tok1", "gpuhubt-tok2"


def denied(what: str, response: requests.Response, codes=(403, 404)) -> None:
    assert response.status_code in codes, f"{what}: got {response.status_code} {response.text[:200]}"
    DENIED.append(f"{what} -> {response.status_code}")


def quota_properties(**values) -> dict:
    """Group properties holding a quota the schema accepts: a refusal is then about who asks, not what."""
    quota.parse(values, "test")
    return {quota.PROPERTY: values}


def as_token(token: str):
    s = requests.Session()
    s.headers["Authorization"] = f"token {token}"
    return s


def token_for(hub, user: str, **body) -> str:
    r = hub.api("POST", f"/users/{user}/tokens", json={"note": "test", **body})
    assert r.status_code == 201, r.text
    return r.json()["token"]


@pytest.fixture(scope="module")
def two_students(hub):
    hub.api("POST", "/users", json={"usernames": [STUDENT, OTHER]})
    hub.start_server(OTHER)
    hub.wait_ready(OTHER)
    yield
    for user in (STUDENT, OTHER):
        if hub.user_model(user)["servers"]:
            hub.stop_server(user)


def test_a_token_from_the_token_page_drives_the_students_own_server_and_nothing_else(hub, browser_page, two_students):
    page = browser_page
    sign_in_with_password(page, hub.url, STUDENT, SHARED_PASSWORD, next_path="/hub/token")
    page.wait_for_url("**/hub/token")
    page.fill("#token-note", "training script")
    page.click("text=Request new API token")
    page.wait_for_function("document.querySelector('#token-result').textContent.trim().length > 0")
    token = page.inner_text("#token-result").strip()
    assert len(token) >= 32
    api = as_token(token)
    hub_api = f"{hub.url}/hub/api"

    r = api.post(f"{hub_api}/users/{STUDENT}/server", json={})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(STUDENT)
    r = api.get(f"{hub.url}/user/{STUDENT}/api/contents", timeout=30)
    assert r.status_code == 200 and r.json()["type"] == "directory"

    denied("student token -> another user's server through the proxy", api.get(f"{hub.url}/user/{OTHER}/api/contents"))
    denied("student token -> start another user's server", api.post(f"{hub_api}/users/{OTHER}/server", json={}))
    denied("student token -> stop another user's server", api.delete(f"{hub_api}/users/{OTHER}/server"))
    denied("student token -> another user's model", api.get(f"{hub_api}/users/{OTHER}"))
    hub.api("POST", "/groups/students")
    quota_body = quota_properties(max_devices_per_user=8)
    denied(
        "student token -> group properties (quotas)",
        api.put(f"{hub_api}/groups/students/properties", json=quota_body),
    )
    assert hub.api("PUT", "/groups/students/properties", json=quota_body).status_code == 200  # the admin may
    denied("student token -> admin: list users", api.get(f"{hub_api}/users"))
    denied("student token -> admin: make self admin", api.patch(f"{hub_api}/users/{STUDENT}", json={"admin": True}))
    denied("student token -> admin: proxy routes", api.get(f"{hub_api}/proxy"))
    denied("student token -> metrics", api.get(f"{hub.url}/hub/metrics"))

    r = api.delete(f"{hub_api}/users/{STUDENT}/server")
    assert r.status_code in (202, 204), r.text


def test_tokens_expire_and_their_lifetime_is_capped(hub, two_students):
    short = token_for(hub, STUDENT, expires_in=1)
    assert requests.get(f"{hub.url}/hub/api/user", headers={"Authorization": f"token {short}"}).ok
    time.sleep(2.5)
    denied(
        "expired token -> whoami",
        requests.get(f"{hub.url}/hub/api/user", headers={"Authorization": f"token {short}"}),
        codes=(403,),
    )
    r = hub.api("POST", f"/users/{STUDENT}/tokens", json={"expires_in": 10 * 365 * 86400})
    assert r.status_code == 400 and "expires_in" in r.text


def test_metrics_need_their_scope(hub):
    denied("anonymous -> metrics", requests.get(f"{hub.url}/hub/metrics"))
    assert hub.api("GET", "/users").ok
    assert requests.get(f"{hub.url}/hub/metrics", headers={"Authorization": f"token {hub.token}"}).status_code == 200


def test_forms_without_the_xsrf_token_are_refused(hub, two_students):
    s = requests.Session()
    s.get(f"{hub.url}/hub/login")
    r = s.post(f"{hub.url}/hub/login", data={"username": STUDENT, "password": SHARED_PASSWORD}, allow_redirects=False)
    denied("login form without _xsrf", r, codes=(403,))


@pytest.fixture(scope="module")
def staff_hub(tmp_path_factory, test_image, test_network, chp_on_path):
    """An `oidc`-mode hub (staff roles need real identities) with a lab admin, a course with its
    instructor, a student in it and one outside; restarted once so the instructor role exists."""
    hub, provider = oidc_hub(tmp_path_factory.mktemp("staff"), test_image)
    try:
        hub.start()
        hub.api("POST", "/users", json={"usernames": [LAB_ADMIN, TEACHER, PUPIL, OUTSIDER]})
        assert hub.api("POST", "/groups/lab-admins/users", json={"users": [LAB_ADMIN]}).ok
        hub.api("POST", "/groups/course-ml201", json={"users": [PUPIL]})
        course = {"title": "ML 201", "instructors": [TEACHER], "source": {"volume": True}}
        assert hub.api("PUT", "/groups/course-ml201/properties", json={courses.PROPERTY: course}).ok
        hub.stop()
        hub.start()  # instructor roles follow the courses at hub start
        for user in (PUPIL, OUTSIDER):
            hub.start_server(user)
        for user in (PUPIL, OUTSIDER):
            hub.wait_ready(user)
        yield hub
        for user in (PUPIL, OUTSIDER):
            if hub.user_model(user)["servers"]:
                hub.stop_server(user)
    finally:
        hub.stop()
        provider.stop()


LAB_ADMIN, TEACHER, PUPIL, OUTSIDER = "gpuhubt-labadm", "gpuhubt-teach", "gpuhubt-pupil", "gpuhubt-outsid"


def test_a_lab_admin_manages_groups_and_servers_but_is_not_a_hub_admin(staff_hub):
    hub = staff_hub
    api = as_token(token_for(hub, LAB_ADMIN))
    base = f"{hub.url}/hub/api"
    assert api.post(f"{base}/groups/students").status_code in (201, 409)
    r = api.put(f"{base}/groups/students/properties", json=quota_properties(max_devices_per_user=1))
    assert r.status_code == 200, r.text
    assert api.post(f"{base}/groups/students/users", json={"users": [OUTSIDER]}).ok
    assert {u["name"] for u in api.get(f"{base}/users").json()} >= {PUPIL, OUTSIDER}
    assert api.get(f"{hub.url}/hub/metrics").status_code == 200
    assert api.get(f"{hub.url}/user/{OUTSIDER}/api/contents").status_code == 200
    denied("lab admin -> create users", api.post(f"{base}/users", json={"usernames": ["gpuhubt-new"]}))
    denied("lab admin -> make someone hub admin", api.patch(f"{base}/users/{OUTSIDER}", json={"admin": True}))
    denied("lab admin -> another user's tokens", api.get(f"{base}/users/{OUTSIDER}/tokens"))
    denied("lab admin -> make a token for another user", api.post(f"{base}/users/{OUTSIDER}/tokens", json={}))
    denied("lab admin -> proxy routes", api.get(f"{base}/proxy"))


def test_an_instructor_sees_their_course_members_servers_and_nothing_else(staff_hub, browser_page):
    hub = staff_hub
    api = as_token(token_for(hub, TEACHER))
    base = f"{hub.url}/hub/api"
    assert api.get(f"{base}/users/{PUPIL}").json()["servers"][""]["ready"] is True
    # In class: the instructor signs in and opens the student's JupyterLab in their own browser.
    sign_in_at_provider(browser_page, hub.url, TEACHER, next_path=f"/user/{PUPIL}/lab")
    # JupyterHub asks before letting anyone into a server that is not their own.
    browser_page.get_by_role("button", name="Authorize").click()
    wait_for_lab(browser_page, PUPIL)
    # From a script: a token narrowed to one student's server (single-user servers cannot resolve
    # group filters themselves; the hub checks the narrowing against the course when issuing it).
    narrowed = token_for(hub, TEACHER, scopes=[f"access:servers!user={PUPIL}"])
    assert as_token(narrowed).get(f"{hub.url}/user/{PUPIL}/api/contents").status_code == 200
    r = hub.api("POST", f"/users/{TEACHER}/tokens", json={"scopes": [f"access:servers!user={OUTSIDER}"]})
    denied("instructor -> a token for a server outside the course", r, codes=(400, 403))
    denied("instructor -> a user outside the course", api.get(f"{base}/users/{OUTSIDER}"))
    denied("instructor -> a server outside the course", api.get(f"{hub.url}/user/{OUTSIDER}/api/contents"))
    denied(
        "instructor -> enrol someone (would reach their server)",
        api.post(f"{base}/groups/course-ml201/users", json={"users": [OUTSIDER]}),
    )
    # The course kept as it is, a quota added: what a lab admin could send.
    properties = {
        **hub.api("GET", "/groups/course-ml201").json()["properties"],
        **quota_properties(max_devices_per_user=8),
    }
    denied(
        "instructor -> course group properties (quotas)",
        api.put(f"{base}/groups/course-ml201/properties", json=properties),
    )
    assert hub.api("PUT", "/groups/course-ml201/properties", json=properties).status_code == 200  # the admin may
    assert api.delete(f"{base}/users/{PUPIL}/server").status_code in (202, 204)  # help: restart a stuck server


def test_with_a_shared_password_a_name_in_lab_admins_gets_no_staff_rights(hub, two_students):
    # Anyone with the shared password may sign in under any name, so no role is given by name or group.
    hub.api("POST", "/groups/lab-admins")
    hub.api("POST", "/groups/students")
    hub.api("POST", "/users", json={"usernames": ["gpuhubt-fakeadm"]})
    assert hub.api("POST", "/groups/lab-admins/users", json={"users": ["gpuhubt-fakeadm"]}).ok
    api = as_token(token_for(hub, "gpuhubt-fakeadm"))
    base = f"{hub.url}/hub/api"
    quota_body = quota_properties(max_devices_per_user=8)
    denied(
        "shared-password 'lab admin' -> group properties",
        api.put(f"{base}/groups/students/properties", json=quota_body),
    )
    assert hub.api("PUT", "/groups/students/properties", json=quota_body).status_code == 200  # the admin may
    denied("shared-password 'lab admin' -> list users", api.get(f"{base}/users"))
    denied("shared-password 'lab admin' -> another user's server", api.get(f"{hub.url}/user/{OTHER}/api/contents"))


PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print('open')\n"
    "except OSError as e:\n"
    "    print('closed', type(e).__name__)\n"
)


def probe(container, host: str, port: int) -> str:
    code, out = container.exec_run(["python3", "-c", PROBE, host, str(port)], user="1000:100")
    return out.decode().strip()


@pytest.fixture
def metadata_server():
    """A stand-in cloud metadata service on this host at 169.254.169.254:80 (as root)."""
    import http.server
    import os
    import subprocess
    import threading

    if os.geteuid() != 0:
        pytest.fail("the metadata test adds 169.254.169.254 to lo and needs root (CI runs as root)")
    added = (
        subprocess.run(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"], capture_output=True).returncode == 0
    )
    server = http.server.HTTPServer(("169.254.169.254", 80), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield
    server.shutdown()
    server.server_close()
    if added:
        subprocess.run(["ip", "addr", "del", "169.254.169.254/32", "dev", "lo"], capture_output=True)


def refused(what: str, result: str) -> None:
    assert result.startswith("closed"), f"{what}: {result}"
    DENIED.append(f"{what} -> {result}")


def test_user_containers_reach_the_hub_but_not_each_other_the_proxy_api_or_metadata(
    hub, docker_client, two_students, metadata_server
):
    hub.start_server(STUDENT)
    hub.wait_ready(STUDENT)

    mine, theirs = user_container(docker_client, STUDENT), user_container(docker_client, OTHER)
    their_ip = theirs.attrs["NetworkSettings"]["Networks"][TEST_NETWORK]["IPAddress"]
    assert requests.get("http://169.254.169.254/", timeout=5).ok  # the host itself reaches it
    assert probe(mine, TEST_GATEWAY, int(hub.env["GPUHUB_HUB_PORT"])) == "open"  # the hub's API: needed
    refused("user container -> another user's server by container IP", probe(mine, their_ip, 8888))
    refused("user container -> the proxy's REST API", probe(mine, TEST_GATEWAY, int(hub.env["GPUHUB_PROXY_API_PORT"])))
    refused("user container -> metadata address 169.254.169.254", probe(mine, "169.254.169.254", 80))
    # and the hub still reaches both servers through the proxy
    assert hub.api("GET", f"/users/{OTHER}").json()["servers"][""]["ready"] is True
