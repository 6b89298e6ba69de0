"""The foundation, end to end: a real hub, proxy, Docker Engine and notebook containers."""

import subprocess
import sys
import time

import docker
import pytest

from harness.hub import ROOT, SHARED_PASSWORD, user_container
from spawner.container import LABEL_DEVICES, LABEL_SERVER, LABEL_USER
from spawner.sizes import parse_size

from .browserless import UserSession


def test_student_signs_in_and_their_files_survive_stop_and_start(hub, docker_client, username):
    student = UserSession(hub.url, username)
    r = student.login(SHARED_PASSWORD)
    assert r.ok and "/hub/login" not in r.url, "login through the form failed"

    r = student.hub_api("POST", f"/users/{username}/server")
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(username)

    lab = student.open_lab()
    assert lab.ok and "JupyterLab" in lab.text
    r = student.server_api(
        "PUT", "/contents/notes.txt", json={"type": "file", "format": "text", "content": "epoch 3: loss 0.12"}
    )
    assert r.status_code in (200, 201), r.text

    first = user_container(docker_client, username, include_stopped=True)
    hub.stop_server(username)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(first.id)
    assert docker_client.volumes.get(f"jupyterhub-user-{username}")

    r = student.hub_api("POST", f"/users/{username}/server")
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(username)
    assert user_container(docker_client, username, include_stopped=True).id != first.id
    student.open_lab()
    r = student.server_api("GET", "/contents/notes.txt")
    assert r.ok, r.text
    assert r.json()["content"] == "epoch 3: loss 0.12"


def test_a_wrong_password_does_not_sign_in(hub, username):
    r = UserSession(hub.url, username).login("not-the-password")
    assert r.status_code == 403 or "/hub/login" in r.url


def test_user_containers_are_hardened_and_limited(hub, docker_client, username):
    hub.start_server(username)
    hub.wait_ready(username)
    c = user_container(docker_client, username, include_stopped=True)
    c.reload()
    host = c.attrs["HostConfig"]
    assert c.attrs["Config"]["User"] == "1000:100"
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert host["ShmSize"] == parse_size("1G")
    assert host["Memory"] == parse_size("2G")
    assert host["PidsLimit"] == 1024
    assert c.labels[LABEL_USER] == username and c.labels[LABEL_SERVER] == "" and LABEL_DEVICES in c.labels
    mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
    assert mounts["/home/jovyan"]["Name"] == f"jupyterhub-user-{username}"
    assert not any("docker.sock" in (m.get("Source") or "") for m in c.attrs["Mounts"])

    # What the process itself sees: uid 1000, no capabilities, no new privileges, big /dev/shm.
    code, out = c.exec_run(
        ["sh", "-c", "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/1/status; df -k /dev/shm | tail -1"]
    )
    out = out.decode()
    assert code == 0, out
    lines = out.split("\n")
    assert lines[0] == "1000"
    assert "CapEff:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    assert int(lines[3].split()[1]) == 1024 * 1024  # 1G in KiB
    assert c.attrs["Config"]["Env"].count("NVIDIA_VISIBLE_DEVICES=void") == 1
    hub.stop_server(username)


def test_servers_keep_running_across_a_hub_restart(make_hub, docker_client, username):
    hub = make_hub().start()
    hub.start_server(username)
    hub.wait_ready(username)
    before = user_container(docker_client, username, include_stopped=True).id

    hub.stop()
    assert docker_client.containers.get(before).status == "running"
    hub.start()

    model = hub.user_model(username)
    assert model["servers"][""]["ready"] is True
    assert user_container(docker_client, username, include_stopped=True).id == before
    r = hub.api("GET", "/users/" + username + "/tokens")  # the hub answers for the user again
    assert r.ok
    hub.stop_server(username)


def test_a_spawn_with_a_missing_image_fails_with_a_clear_message(make_hub, username):
    hub = make_hub(image="gpuhub/no-such-image:1").start()
    hub.start_server(username)
    events = hub.progress(username)
    assert events[-1].get("failed"), events
    message = events[-1]["message"]
    assert "gpuhub/no-such-image:1" in message and "is not on this Docker host" in message
    assert "Traceback" not in message
    assert hub.user_model(username)["servers"] == {}


OAUTH = {"GPUHUB_PUBLIC_URL": "http://h", "GPUHUB_OAUTH_CLIENT_ID": "x", "GPUHUB_OAUTH_CLIENT_SECRET": "y"}


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"GPUHUB_MEM_LIMIT": "a-lot"}, "GPUHUB_MEM_LIMIT"),
        ({"GPUHUB_PORT": "99999"}, "GPUHUB_PORT"),
        ({"GPUHUB_SHARED_PASSWORD": ""}, "GPUHUB_SHARED_PASSWORD"),
        (
            {"GPUHUB_AUTH": "oidc", **OAUTH, "GPUHUB_ADMIN_USERS": "", "GPUHUB_OIDC_ISSUER": "http://127.0.0.1:1"},
            "GPUHUB_OIDC_ISSUER='http://127.0.0.1:1': cannot read",
        ),
        (
            {"GPUHUB_AUTH": "github", **OAUTH, "GPUHUB_ADMIN_USERS": "", "GPUHUB_OAUTH_CLIENT_ID": ""},
            "GPUHUB_OAUTH_CLIENT_ID is not set",
        ),
        (
            {"GPUHUB_AUTH": "github", **OAUTH, "GPUHUB_ADMIN_USERS": "admin"},
            "GPUHUB_ADMIN_USERS=admin is the shared-password quickstart's admin",
        ),
    ],
)
def test_a_bad_setting_stops_the_hub_with_one_line_naming_it(tmp_path, overrides, words):
    env = {
        "PATH": "/usr/bin:/bin",
        "GPUHUB_SHARED_PASSWORD": SHARED_PASSWORD,
        "GPUHUB_ADMIN_PASSWORD": "y" * 40,
        "GPUHUB_DATA_DIR": str(tmp_path / "data"),
        **overrides,
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "jupyterhub", "-f", str(ROOT / "jupyterhub_config.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [errors[0]] and errors[0].startswith(f"gpuhub: configuration error: {words}")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert time.monotonic() - start < 30
