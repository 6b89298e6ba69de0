"""A hub for the console's tests: `oidc` mode (staff roles need real identities), two stand-in GPUs
(static inventory, the stand-in pynvml for telemetry), a lab admin, a course with its instructor and
a student in it, and students outside it. The console runs as the hub starts it, on a port of its own."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import requests

from harness.hub import Hub, free_port
from spawner import courses

from . import oidc

STANDIN = Path(__file__).resolve().parents[1] / "hardware" / "nvml_standin"
GPUS = [f"GPU-0c0e0000-0000-0000-0000-00000000000{i}" for i in range(2)]
MODEL = "NVIDIA H100 80GB HBM3"
LAB_ADMIN, TEACHER = "gpuhubt-labby", "gpuhubt-prof"
COURSE_STUDENT, WAITER, STUDENT = "gpuhubt-cstud", "gpuhubt-waiter", "gpuhubt-alice"
COURSE = "course-gpu101"
GPU_GROUP, OTHER_GROUP = "gpu-users", "physics"
USERS = {
    **oidc.USERS,
    LAB_ADMIN: ["lab-admins"],
    TEACHER: ["instructors"],
    COURSE_STUDENT: ["students", COURSE, GPU_GROUP],
    WAITER: ["students", GPU_GROUP, OTHER_GROUP],
}
GPU_CONFIG = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "default": True},
        {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}},
    ],
    "gpus": [{"uuid": u, "model": MODEL, "memory_mib": 81559} for u in GPUS],
    "quota": {
        "default": {"profiles": ["cpu"]},
        "groups": {
            GPU_GROUP: {"profiles": "*", "max_devices_per_user": 1},
            OTHER_GROUP: {"profiles": ["cpu"], "gpu_hours_per_user": "10/week"},
        },
    },
}
CONSOLE = "/services/gpuhub/"


def nvml_layout(path: Path) -> None:
    layout = {
        "gpus": [
            {
                "uuid": u,
                "name": MODEL,
                "memory_mib": 81559,
                "mig": "disabled",
                "utilization": 37,
                "memory_used_mib": 2048,
                "gpm": "NotSupported",
            }
            for u in GPUS
        ]
    }
    path.write_text(json.dumps(layout))


def start(workdir: Path, image: str) -> tuple[Hub, oidc.Provider]:
    (workdir / "gpus.json").write_text(json.dumps(GPU_CONFIG))
    nvml_layout(workdir / "nvml.json")
    saved, oidc.USERS = oidc.USERS, USERS  # the provider's users are read when it starts
    try:
        hub, provider = oidc.oidc_hub(workdir, image)
    finally:
        oidc.USERS = saved
    hub.env.update(
        {
            "GPUHUB_GPU_CONFIG": str(workdir / "gpus.json"),
            "GPUHUB_CONSOLE_PORT": str(free_port()),
            "GPUHUB_ALLOWED_GROUPS": "students,instructors,lab-admins",
            "GPUHUB_MEM_LIMIT": "1G",
            "GPUHUB_TELEMETRY_INTERVAL": "1",
            "GPUHUB_FAKE_NVML": str(workdir / "nvml.json"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(STANDIN), os.environ.get("PYTHONPATH", "")) if p),
        }
    )
    try:
        hub.start()
        everyone = [LAB_ADMIN, TEACHER, COURSE_STUDENT, WAITER, STUDENT]
        assert hub.api("POST", "/users", json={"usernames": everyone}).status_code in (201, 409)
        for group, members in {
            "lab-admins": [LAB_ADMIN],
            COURSE: [COURSE_STUDENT],
            GPU_GROUP: [COURSE_STUDENT, WAITER],
            OTHER_GROUP: [WAITER],
            "students": [COURSE_STUDENT, WAITER, STUDENT],
        }.items():
            assert hub.api("POST", f"/groups/{group}").status_code in (201, 409)
            assert hub.api("POST", f"/groups/{group}/users", json={"users": members}).ok
        course = {"title": "GPU 101", "instructors": [TEACHER], "source": {"volume": True}}
        assert hub.api("PUT", f"/groups/{COURSE}/properties", json={courses.PROPERTY: course}).ok
        wait_for_console(hub)
    except BaseException:
        hub.stop()
        provider.stop()
        raise
    return hub, provider


def wait_for_console(hub: Hub, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{hub.url}{CONSOLE}api/openapi.json", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the console did not answer in {timeout} s:\n{hub.log_tail()}")


def token(hub: Hub, user: str) -> str:
    r = hub.api("POST", f"/users/{user}/tokens", json={"note": "console test", "expires_in": 3600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def console_api(hub: Hub, user_token: str, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"token {user_token}", **kwargs.pop("headers", {})}
    return requests.request(method, f"{hub.url}{CONSOLE}api/{path}", headers=headers, timeout=30, **kwargs)


def hub_api(hub: Hub, user_token: str, method: str, path: str, **kwargs) -> requests.Response:
    """The hub's own REST API (`/hub/api...`) with a user's token."""
    headers = {"Authorization": f"token {user_token}", **kwargs.pop("headers", {})}
    return requests.request(method, f"{hub.url}/hub/api{path}", headers=headers, timeout=30, **kwargs)
