"""GPU operations end to end: telemetry, GPU-idle culling, budgets and usage records.

A real hub, real Docker, the stand-in NVIDIA hook, and the stand-in pynvml
(tests/hardware/nvml_standin) in the hub process, whose utilization figures the
tests change by rewriting its layout file. What the user sees is checked in
Chromium (JupyterLab's banner, the hub's home page); whether servers run is read
from Docker; the usage records through the hub's REST API.
"""

import json
import os
import re
import time
from pathlib import Path

import pytest
import requests

from harness.hub import SHARED_PASSWORD, TEST_HUB_ID, user_container
from spawner import roles
from spawner.container import LABEL_DEVICES, LABEL_HUB, LABEL_SERVER, LABEL_USER

from .browser import sign_in_with_password, wait_for_lab

STANDIN = Path(__file__).resolve().parents[1] / "hardware" / "nvml_standin"
GPUS = [f"GPU-0b5e0000-0000-0000-0000-00000000000{i}" for i in range(2)]
MODEL = "NVIDIA H100 80GB HBM3"
IDLE_TIMEOUT, WARNING = 60, 40
GPU_CONFIG = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "default": True},
        {
            "slug": "gpu",
            "display_name": "1 GPU",
            "gpu": {"count": 1},
            "gpu_idle_timeout": f"{IDLE_TIMEOUT}s",
            "gpu_idle_threshold": 5,
        },
    ],
    "gpus": [{"uuid": u, "model": MODEL, "memory_mib": 81559} for u in GPUS],
    "quota": {
        "default": {"profiles": ["cpu"]},
        "groups": {
            "gpu-users": {"profiles": "*", "max_devices_per_user": 1},
            # 0.015 device-hours = 54 s of one GPU a day
            "budgeted": {"profiles": ["cpu", "gpu"], "max_devices_per_user": 1, "gpu_hours_per_user": "0.015/day"},
        },
    },
}


class FakeGPUs:
    """The stand-in pynvml's layout file: what 'NVML' says about each GPU."""

    def __init__(self, path: Path):
        self.path = path
        self.layout = {
            "gpus": [
                {
                    "uuid": u,
                    "name": MODEL,
                    "memory_mib": 81559,
                    "mig": "disabled",
                    "utilization": 100,
                    "memory_used_mib": 1490,
                    "gpm": "NotSupported",
                }
                for u in GPUS
            ]
        }
        self.write()

    def set_utilization(self, uuid: str, percent: int) -> None:
        for g in self.layout["gpus"]:
            if g["uuid"] == uuid:
                g["utilization"] = percent
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.layout))
        os.replace(tmp, self.path)


@pytest.fixture
def ops_hub(make_hub, tmp_path):
    config = tmp_path / "gpus.json"
    config.write_text(json.dumps(GPU_CONFIG))
    fake = FakeGPUs(tmp_path / "nvml.json")
    pythonpath = os.pathsep.join(p for p in (str(STANDIN), os.environ.get("PYTHONPATH", "")) if p)
    hub = make_hub(
        env={
            "GPUHUB_GPU_CONFIG": str(config),
            "GPUHUB_MEM_LIMIT": "1G",
            "GPUHUB_TELEMETRY_INTERVAL": "1",
            "GPUHUB_CULL_WARNING": str(WARNING),
            "PYTHONPATH": pythonpath,
            "GPUHUB_FAKE_NVML": str(fake.path),
        },
        # The test's admin service reads usage like a lab admin does.
        extra_config=(
            "c.JupyterHub.load_roles.append("
            f"{{'name': 'test-usage', 'scopes': [{roles.READ_USAGE!r}], 'services': ['test-admin']}})\n"
        ),
    ).start()
    hub.fake_gpus = fake
    return hub


def join(hub, group, users):
    hub.api("POST", "/users", json={"usernames": users})
    assert hub.api("POST", f"/groups/{group}").status_code in (201, 409)
    assert hub.api("POST", f"/groups/{group}/users", json={"users": users}).ok


def user_token(hub, name) -> str:
    r = hub.api("POST", f"/users/{name}/tokens", json={"note": "test", "expires_in": 3600})
    assert r.ok, r.text
    return r.json()["token"]


def notice(hub, token, server=""):
    r = hub.api("GET", f"/gpuhub/notice?server={server}", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200, r.text
    return r.json()["notice"]


def server_container(docker_client, name, server=""):
    """The running container of one of the user's servers, from Docker's own state; None if none."""
    found = docker_client.containers.list(
        filters={"label": [f"{LABEL_HUB}={TEST_HUB_ID}", f"{LABEL_USER}={name}", f"{LABEL_SERVER}={server}"]}
    )
    return found[0] if found else None


def device_of(docker_client, name) -> str:
    return server_container(docker_client, name).labels[LABEL_DEVICES]


def wait_until(what, check, timeout, every=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ready(hub, name, server=""):
    return hub.user_model(name)["servers"].get(server, {}).get("ready")


def usage(hub, **params):
    r = hub.api("GET", "/gpuhub/usage", params=params)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_an_idle_gpu_is_warned_in_jupyterlab_then_stopped_and_the_hub_page_says_why(
    ops_hub, docker_client, browser_page, username
):
    hub = ops_hub
    join(hub, "gpu-users", [username])
    r = hub.start_server(username, options={"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(username)
    # A CPU server beside it: no GPU, so GPU-idle culling never touches it.
    assert hub.start_server(username, "cpu", options={"profile": "cpu"}).status_code in (201, 202)
    hub.wait_ready(username, "cpu")
    gpu = device_of(docker_client, username)
    c = server_container(docker_client, username)
    assert c.exec_run(["sh", "-c", "echo kept > ~/work.txt"]).exit_code == 0
    token = user_token(hub, username)

    # Busy GPU: no warning, and the metrics say who holds the device and how busy it is.
    time.sleep(3)
    assert notice(hub, token) is None
    metrics = requests.get(f"{hub.url}/hub/metrics", headers={"Authorization": f"token {hub.token}"}, timeout=30).text
    labels = f'device="{gpu}",mig_profile="",model="{MODEL}",server="",user="{username}"'
    assert f"gpuhub_device_utilization_percent{{{labels}}} 100.0" in metrics, [
        line for line in metrics.splitlines() if "gpuhub_device" in line
    ][:10]

    sign_in_with_password(browser_page, hub.url, username, SHARED_PASSWORD, next_path=f"/user/{username}/lab")
    wait_for_lab(browser_page, username)

    idle_from = time.monotonic()
    hub.fake_gpus.set_utilization(gpu, 0)  # the student walked away; tensors still allocated
    warned = wait_until("the stop warning", lambda: notice(hub, token), IDLE_TIMEOUT)
    assert warned["reason"] == "gpu-idle" and "idle" in warned["message"] and "stops at" in warned["message"]
    assert time.monotonic() - idle_from >= IDLE_TIMEOUT - WARNING - 2  # not before the warning time
    banner = browser_page.locator("#gpuhub-notice")
    banner.wait_for(state="visible", timeout=WARNING * 1000)
    assert "idle" in banner.inner_text()

    wait_until("the GPU server to stop", lambda: server_container(docker_client, username) is None, IDLE_TIMEOUT + 30)
    assert time.monotonic() - idle_from >= IDLE_TIMEOUT - 2
    assert "" not in hub.user_model(username)["servers"]
    # The CPU server is untouched.
    assert hub.user_model(username)["servers"]["cpu"]["ready"] and server_container(docker_client, username, "cpu")

    browser_page.goto(f"{hub.url}/hub/home")
    message = browser_page.locator(".gpuhub-server-message").first
    assert re.search(r"Stopped at .* UTC: its GPU was idle for 1 min\. Your files are kept\.", message.inner_text())

    # The home volume is intact.
    image = hub.env["GPUHUB_NOTEBOOK_IMAGE"]
    out = docker_client.containers.run(
        image, ["cat", "/h/work.txt"], volumes={f"jupyterhub-user-{username}": {"bind": "/h"}}, remove=True
    )
    assert out.decode().strip() == "kept"
    # Its usage record ended with the reason GPU-idle.
    rows = wait_until(
        "the usage record to end with the reason gpu-idle",
        lambda: (
            (found := {row["key"]: row for row in usage(hub, by="reason", user=username)}).get("gpu-idle") and found
        ),
        10,
    )
    assert rows["gpu-idle"]["leases"] == 1, rows
    assert rows["gpu-idle"]["gpu_hours"] * 3600 >= IDLE_TIMEOUT


def test_a_gpu_hour_budget_stops_a_running_server_and_refuses_the_next_start(ops_hub, docker_client, username):
    hub = ops_hub
    join(hub, "budgeted", [username])
    token = user_token(hub, username)
    r = hub.start_server(username, options={"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(username)
    warned = wait_until("the budget warning", lambda: notice(hub, token), 60)
    assert warned["reason"] == "budget" and "Your GPU-hour budget" in warned["message"], warned
    wait_until("the server to stop", lambda: user_container(docker_client, username) is None, 90)
    # The record is closed by the usage writer's thread, a moment after the container is gone.
    rows = wait_until(
        "the usage record to end with the reason budget",
        lambda: (found := {row["key"]: row for row in usage(hub, by="reason", user=username)}).get("budget") and found,
        10,
    )
    assert rows["budget"]["leases"] == 1 and "running" not in rows, rows

    r = hub.start_server(username, options={"profile": "gpu"})
    assert r.status_code == 403, r.text
    message = r.json()["message"]
    assert "budget is used up" in message and "of 0.015 GPU-hours this day" in message and "refills" in message
    assert user_container(docker_client, username) is None
    # CPU servers need no GPU-hours.
    assert hub.start_server(username, options={"profile": "cpu"}).status_code in (201, 202)
    hub.wait_ready(username)


def test_usage_records_survive_a_hub_sigkill_without_counting_twice(ops_hub, docker_client, username):
    hub = ops_hub
    join(hub, "gpu-users", [username])
    assert hub.start_server(username, options={"profile": "gpu"}).status_code in (201, 202)
    hub.wait_ready(username)
    started = time.time()
    time.sleep(3)
    hub.kill()
    hub.reap()
    time.sleep(2)
    hub.start()
    wait_until("the hub to know the server again", lambda: ready(hub, username), 60)
    time.sleep(3)
    (row,) = usage(hub, by="user", user=username)
    assert row["leases"] == 1 and set(row["by_reason"]) == {"running"}, row
    # Stopped by its user, with their own token: the record says "user" (a lab admin's stop says "admin").
    own = user_token(hub, username)
    r = hub.api("DELETE", f"/users/{username}/server", headers={"Authorization": f"token {own}"})
    assert r.status_code in (202, 204), r.text
    wait_until("the server to stop", lambda: "" not in hub.user_model(username)["servers"], 60)
    stopped = time.time()
    row = wait_until(
        "the usage record to end",
        lambda: [r for r in usage(hub, by="user", user=username) if "running" not in r["by_reason"]],
        10,
    )[0]
    assert row["leases"] == 1 and set(row["by_reason"]) == {"user"}, row
    held = row["gpu_hours"] * 3600
    # One device, counted once, for about as long as it ran (the container's life, not the hub's).
    assert 0.7 * (stopped - started) <= held <= stopped - started + 15, (held, stopped - started)


def test_bad_usage_requests_get_one_line_400s_and_students_get_403(ops_hub, username):
    hub = ops_hub
    r = hub.api("GET", "/gpuhub/usage", params={"by": "colour"})
    assert r.status_code == 400 and "colour" in r.json()["message"]
    r = hub.api("GET", "/gpuhub/usage", params={"since": "2026-13-01"})
    assert r.status_code == 400 and "2026-13-01" in r.json()["message"]
    hub.api("POST", "/users", json={"usernames": [username]})
    token = user_token(hub, username)
    r = hub.api("GET", "/gpuhub/usage", headers={"Authorization": f"token {token}"})
    assert r.status_code == 403 and roles.READ_USAGE in r.json()["message"]
    r = hub.api("DELETE", "/gpuhub/servers/admin", headers={"Authorization": f"token {token}"})
    assert r.status_code in (403, 404) and "message" in r.json()
