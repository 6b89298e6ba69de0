"""Lab admins' REST endpoints (docs/api.md) end to end: a real hub in `oidc` mode (staff roles need real
identities), real Docker, the stand-in NVIDIA hook, two fake GPUs.

Who holds which device is read from Docker's labels, never from gpuhub's answer alone; quota edits are
checked by starting a server; a quarantine comes from starts that really failed on the GPU path (the
NVIDIA hook made unrunnable for a moment, as a broken toolkit would be) or from a container gpuhub
never started that uses a held device.
"""

from __future__ import annotations

import json
import os
import stat
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from harness.hub import TEST_HUB_ID, user_container
from spawner import courses, quota, roles
from spawner.container import LABEL_DEVICES, LABEL_HUB, LABEL_SERVER, LABEL_USER

from .denials import DENIED
from .oidc import oidc_hub

GPUS = [f"GPU-ad000000-0000-0000-0000-00000000000{i}" for i in range(2)]
GPU_CONFIG = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "default": True},
        {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}},
    ],
    "gpus": [{"uuid": u, "model": "NVIDIA A100-SXM4-80GB"} for u in GPUS],
    "quota": {
        "default": {"profiles": []},  # only a group's quota lets anyone start anything
        "groups": {"students": {"profiles": ["cpu", "gpu"], "max_devices_per_user": 1}},
    },
}
LAB, TEACHER, PUPIL, OTHER = "gpuhubt-adlab", "gpuhubt-adtch", "gpuhubt-adpup", "gpuhubt-adoth"
WAITER, EDITED, LIFTER = "gpuhubt-adwai", "gpuhubt-adqed", "gpuhubt-adlft"
COURSE, EDIT_GROUP = "course-adm1", "adm-quota"
HOOK = Path("/run/gpuhub-standin-hook/nvidia-container-runtime-hook")  # where .ci/start-dockerd puts it
REMOVED = "removed from the GPU queue by a lab admin"


def as_token(token: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"token {token}"
    return s


def token_for(hub, user: str) -> str:
    r = hub.api("POST", f"/users/{user}/tokens", json={"note": "test", "expires_in": 3600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def wait_until(what, check, timeout, every=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def device_of(docker_client, user) -> str:
    return user_container(docker_client, user).labels[LABEL_DEVICES]


class Caller:
    """One person's view of gpuhub's endpoints, through their own token."""

    def __init__(self, hub, user):
        self.base = f"{hub.url}/hub/api/gpuhub"
        self.session = as_token(token_for(hub, user))

    def __call__(self, method, path, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.base + path, **kwargs)

    def ok(self, method, path, **kwargs):
        r = self(method, path, **kwargs)
        assert r.status_code == 200, r.text
        return r.json()


def holders(caller) -> dict[str, dict | None]:
    return {d["uuid"]: d["holder"] for g in caller.ok("GET", "/devices")["gpus"] for d in g["devices"]}


def device(caller, uuid) -> dict:
    return next(d for g in caller.ok("GET", "/devices")["gpus"] for d in g["devices"] if d["uuid"] == uuid)


@pytest.fixture(scope="module")
def admin_hub(tmp_path_factory, test_image, test_network, chp_on_path):
    workdir = tmp_path_factory.mktemp("admin-api")
    config = workdir / "gpus.json"
    config.write_text(json.dumps(GPU_CONFIG))
    hub, provider = oidc_hub(workdir, test_image)
    hub.env.update({"GPUHUB_GPU_CONFIG": str(config), "GPUHUB_MEM_LIMIT": "1G", "GPUHUB_TELEMETRY_INTERVAL": "2"})
    # Reconcile often, so a container gpuhub never started is found within seconds.
    hub.config.write_text(hub.config.read_text() + "\nc.GPUDockerSpawner.reconcile_interval = 2\n")
    try:
        hub.start()
        users = [LAB, TEACHER, PUPIL, OTHER, WAITER, EDITED, LIFTER]
        assert hub.api("POST", "/users", json={"usernames": users}).status_code in (201, 409)
        for group, members in (
            ("lab-admins", [LAB]),
            ("students", [PUPIL, OTHER, WAITER, LIFTER]),
            (COURSE, [PUPIL]),
            (EDIT_GROUP, [EDITED]),
        ):
            assert hub.api("POST", f"/groups/{group}").status_code in (201, 409)
            assert hub.api("POST", f"/groups/{group}/users", json={"users": members}).ok
        course = {"title": "Admin 1", "instructors": [TEACHER], "source": {"volume": True}}
        assert hub.api("PUT", f"/groups/{COURSE}/properties", json={courses.PROPERTY: course}).ok
        for user in (PUPIL, OTHER):  # one after the other: PUPIL gets the first GPU
            assert hub.start_server(user, options={"profile": "gpu"}).status_code in (201, 202)
            hub.wait_ready(user)
        hub.callers = {user: Caller(hub, user) for user in (LAB, TEACHER, PUPIL)}
        yield hub
    finally:
        hub.stop()
        provider.stop()


def test_a_lab_admin_sees_every_gpu_with_its_holder_as_docker_has_it(admin_hub, docker_client):
    lab = admin_hub.callers[LAB]
    answer = lab.ok("GET", "/devices")
    assert answer["telemetry_interval"] == 2
    assert [g["uuid"] for g in answer["gpus"]] == GPUS and all(not g["mig"] for g in answer["gpus"])
    found = holders(lab)
    for user in (PUPIL, OTHER):
        holder = found[device_of(docker_client, user)]
        assert holder["user"] == user and holder["server"] == "" and holder["profile"] == "gpu"
        assert holder["charged_to"] == "students" and holder["since"].endswith("+00:00")
    # Telemetry from the hub's sampler (no NVML here: it says why instead of making a figure up).
    wait_until("a telemetry sample", lambda: device(lab, GPUS[0])["telemetry"] is not None, 20)
    assert device(lab, GPUS[0])["quarantine"] == [] and device(lab, GPUS[0])["liftable"] is False


def test_an_instructor_sees_only_their_course_holders_groups_and_usage(admin_hub, docker_client):
    teacher, lab = admin_hub.callers[TEACHER], admin_hub.callers[LAB]
    found = holders(teacher)
    assert found[device_of(docker_client, PUPIL)]["user"] == PUPIL
    assert found[device_of(docker_client, OTHER)] == {"hidden": True}
    assert [g["name"] for g in teacher.ok("GET", "/quotas")["groups"]] == [COURSE]
    everything = [g["name"] for g in lab.ok("GET", "/quotas")["groups"]]
    assert {COURSE, "students", "lab-admins", EDIT_GROUP} <= set(everything)
    # Usage: the records of the course's members, whichever group their GPU is charged to ("students"),
    # and nobody else's.
    everyone = {row["key"] for row in lab.ok("GET", "/usage", params={"by": "user"})["rows"]}
    assert {PUPIL, OTHER} <= everyone
    assert {row["key"] for row in teacher.ok("GET", "/usage", params={"by": "user"})["rows"]} == {PUPIL}
    assert teacher("GET", "/usage", params={"user": OTHER}).status_code == 403
    assert [r["key"] for r in teacher.ok("GET", "/usage", params={"by": "group"})["rows"]] == ["students"]
    assert teacher.ok("GET", "/usage", params={"by": "reason", "group": COURSE})["rows"] == []
    reasons = lab.ok("GET", "/usage", params={"by": "reason", "group": "students"})["rows"]
    assert [r["key"] for r in reasons] == ["running"]
    # Read-only: every write is refused.
    for method, path, body in (
        ("PUT", f"/quotas/{COURSE}", {"profiles": "*"}),
        ("DELETE", f"/queue/{PUPIL}", None),
        ("POST", f"/devices/{GPUS[0]}/lift", None),
    ):
        r = teacher(method, path, json=body)
        assert r.status_code == 403 and roles.MANAGE in r.json()["message"], r.text
        DENIED.append(f"instructor -> {method} gpuhub{path} -> 403")


def test_a_student_gets_403_from_every_endpoint(admin_hub):
    student = admin_hub.callers[PUPIL]
    for method, path, body in (
        ("GET", "/devices", None),
        ("GET", "/queue", None),
        ("GET", "/quotas", None),
        ("GET", "/audit", None),
        ("GET", "/usage", None),
        ("POST", f"/devices/{GPUS[0]}/lift", None),
        ("DELETE", f"/queue/{OTHER}", None),
        ("PUT", "/quotas/students", {"profiles": "*", "max_devices_per_user": 2}),
    ):
        r = student(method, path, json=body)
        assert r.status_code == 403, f"{method} {path}: {r.status_code} {r.text[:200]}"
        assert "\n" not in r.json()["message"]
        DENIED.append(f"student -> {method} gpuhub{path} -> 403")
    assert admin_hub.api("GET", "/groups/students").json()["properties"] == {}


def test_a_lab_admin_removes_a_waiter_and_its_start_fails_saying_so(admin_hub):
    lab = admin_hub.callers[LAB]
    assert admin_hub.start_server(WAITER, options={"profile": "gpu"}).status_code in (201, 202)
    [row] = wait_until("the waiter in the queue", lambda: lab.ok("GET", "/queue")["queue"], 30)
    assert (row["user"], row["server"], row["position"], row["count"], row["charged_to"]) == (
        WAITER,
        "",
        1,
        1,
        "students",
    )
    assert row["since"].endswith("+00:00") and row["waited_s"] >= 0
    assert admin_hub.callers[TEACHER].ok("GET", "/queue")["queue"] == []  # not in the instructor's course

    r = lab("DELETE", f"/queue/{WAITER}")
    assert r.status_code == 204, r.text
    events = admin_hub.progress(WAITER, timeout=30)
    assert events[-1].get("failed") and REMOVED in events[-1]["message"], events[-3:]
    assert lab.ok("GET", "/queue")["queue"] == []
    wait_until("the server to be gone", lambda: "" not in admin_hub.user_model(WAITER)["servers"], 30)
    r = lab("DELETE", f"/queue/{WAITER}")
    assert r.status_code == 404 and WAITER in r.json()["message"]
    [entry] = [e for e in lab.ok("GET", "/audit")["entries"] if e["action"] == "dequeue"]
    assert entry["who"] == LAB and entry["target"] == f"{WAITER}/" and entry["old"]["request"] == "GPU"


def test_a_lab_admin_edits_a_quota_and_the_next_start_obeys_it(admin_hub, docker_client):
    lab = admin_hub.callers[LAB]
    r = admin_hub.start_server(EDITED, options={"profile": "cpu"})
    assert r.status_code == 403 and "does not include the profile 'cpu'" in r.json()["message"], r.text

    r = lab("PUT", f"/quotas/{EDIT_GROUP}", json={"profiles": ["cpu"], "gpu_hours_per_user": "2/week"})
    assert r.status_code == 200, r.text
    row = r.json()
    assert row["name"] == EDIT_GROUP and row["members"] == 1 and row["editable"]
    assert row["effective"]["profiles"] == ["cpu"] and row["effective"]["gpu_hours_per_user"] == "2/week"
    assert row["budgets"]["user"]["budget"] == "2/week"
    assert row["budgets"]["user"]["members"] == [{"user": EDITED, "used_hours": 0.0}]
    stored = admin_hub.api("GET", f"/groups/{EDIT_GROUP}").json()["properties"][quota.PROPERTY]
    assert stored == {"profiles": ["cpu"], "gpu_hours_per_user": "2/week"}
    again = {"gpu_hours_per_user": {"hours": 2, "period": "week"}, "profiles": ["cpu"]}  # the same, written otherwise
    assert lab("PUT", f"/quotas/{EDIT_GROUP}", json=again).status_code == 200  # no change: not in the audit log

    r = admin_hub.start_server(EDITED, options={"profile": "cpu"})
    assert r.status_code in (201, 202), r.text
    admin_hub.wait_ready(EDITED)
    assert user_container(docker_client, EDITED).labels[LABEL_DEVICES] == ""
    admin_hub.stop_server(EDITED)
    r = admin_hub.start_server(EDITED, options={"profile": "gpu"})
    assert r.status_code == 403 and "does not include the profile 'gpu'" in r.json()["message"], r.text

    assert lab("PUT", f"/quotas/{EDIT_GROUP}", json={}).status_code == 200  # removes the property
    assert quota.PROPERTY not in admin_hub.api("GET", f"/groups/{EDIT_GROUP}").json()["properties"]
    r = admin_hub.start_server(EDITED, options={"profile": "cpu"})
    assert r.status_code == 403, r.text
    entries = lab.ok("GET", "/audit", params={"group": EDIT_GROUP})["entries"]
    assert [(e["who"], e["action"], e["old"], e["new"]) for e in entries] == [
        (LAB, "quota", {"profiles": ["cpu"], "gpu_hours_per_user": "2/week"}, None),
        (LAB, "quota", None, {"profiles": ["cpu"], "gpu_hours_per_user": "2/week"}),
    ]


@pytest.mark.parametrize(
    "body, words",
    [
        ("{not json", "JSON"),
        ([{"profiles": "*"}], "mapping"),
        ({"profiles": "*", "colour": "red"}, "colour"),
        ({"max_devices_per_user": -1}, "max_devices_per_user"),
        ({"priority": True}, "priority"),
        ({"gpu_hours_per_user": "lots"}, "gpu_hours_per_user"),
        ({"gpu_hours_per_group": "5/fortnight"}, "period"),
        ({"profiles": ["cpu", "gpu-typo"]}, "unknown profile(s): gpu-typo"),  # as the GPU file is checked
        ('{"gpu_hours_per_user": {"hours": 1' + "0" * 400 + ', "period": "week"}}', "gpu_hours_per_user"),
    ],
)
def test_an_invalid_quota_edit_is_a_one_line_400_that_changes_nothing(admin_hub, body, words):
    lab = admin_hub.callers[LAB]
    before = admin_hub.api("GET", "/groups/students").json()["properties"]
    audit_before = lab.ok("GET", "/audit")["entries"]
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    r = lab("PUT", "/quotas/students", **kwargs)
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert words in message and "\n" not in message and "Traceback" not in message
    assert admin_hub.api("GET", "/groups/students").json()["properties"] == before
    assert lab.ok("GET", "/audit")["entries"] == audit_before


def test_a_quota_edit_of_an_unknown_group_is_404(admin_hub):
    r = admin_hub.callers[LAB]("PUT", "/quotas/no-such-group", json={"profiles": "*"})
    assert r.status_code == 404 and "no-such-group" in r.json()["message"]
    assert admin_hub.api("GET", "/groups/no-such-group").status_code == 404


@contextmanager
def nvidia_hook_broken():
    """The NVIDIA hook cannot run (a broken toolkit): every GPU container's start fails on the GPU path."""
    mode = HOOK.stat().st_mode
    HOOK.chmod(mode & ~(stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    try:
        yield
    finally:
        HOOK.chmod(mode)


def test_a_lab_admin_lifts_a_quarantine_of_failed_starts_but_not_one_of_an_unknown_container(
    admin_hub, docker_client, test_image
):
    if not os.access(HOOK, os.X_OK):
        pytest.fail(f"the stand-in NVIDIA hook is not at {HOOK} (.ci/start-dockerd puts it there)")
    lab = admin_hub.callers[LAB]
    held = device_of(docker_client, PUPIL)
    r = lab("POST", f"/devices/{held}/lift")
    assert r.status_code == 409 and "not quarantined" in r.json()["message"], r.text
    assert lab("POST", "/devices/GPU-00000000-dead-beef-0000-000000000000/lift").status_code == 404

    # A container gpuhub never started, using a device that PUPIL holds: quarantined until it is gone.
    intruder = docker_client.containers.run(
        test_image,
        ["sleep", "600"],
        detach=True,
        labels={LABEL_HUB: TEST_HUB_ID, LABEL_USER: "gpuhubt-intruder", LABEL_SERVER: "", LABEL_DEVICES: held},
    )
    try:
        wait_until("the conflict's quarantine", lambda: device(lab, held)["quarantine"], 30)
        assert device(lab, held)["liftable"] is False
        r = lab("POST", f"/devices/{held}/lift")
        assert r.status_code == 409 and intruder.id[:12] in r.json()["message"], r.text
    finally:
        intruder.remove(force=True)
    wait_until("the quarantine to end with the container", lambda: not device(lab, held)["quarantine"], 30)

    # Three starts that fail on the GPU path quarantine their device; the lab admin lifts it.
    admin_hub.stop_server(OTHER)
    free = next(u for u in GPUS if u != held)
    with nvidia_hook_broken():
        for _ in range(3):
            r = admin_hub.start_server(LIFTER, options={"profile": "gpu"})
            if r.status_code in (201, 202):
                events = admin_hub.progress(LIFTER, timeout=60)
                assert events[-1].get("failed"), events[-3:]
            else:
                assert r.status_code >= 400, r.text
            wait_until("the failed server to be gone", lambda: "" not in admin_hub.user_model(LIFTER)["servers"], 30)
    broken = device(lab, free)
    assert broken["quarantine"] == ["failed 3 starts in a row"] and broken["liftable"] is True
    assert broken["holder"] is None

    # The next start waits (one GPU held, the other quarantined) until the lab admin lifts it.
    assert admin_hub.start_server(LIFTER, options={"profile": "gpu"}).status_code in (201, 202)
    [waiting] = wait_until("the start to wait", lambda: lab.ok("GET", "/queue")["queue"], 30)
    assert waiting["user"] == LIFTER and user_container(docker_client, LIFTER) is None
    r = lab("POST", f"/devices/{free}/lift")
    assert r.status_code == 200, r.text
    assert r.json()["uuid"] == free and r.json()["quarantine"] == []
    admin_hub.wait_ready(LIFTER)
    assert device_of(docker_client, LIFTER) == free
    r = lab("POST", f"/devices/{free}/lift")
    assert r.status_code == 409
    [entry] = [e for e in lab.ok("GET", "/audit")["entries"] if e["action"] == "lift"]
    assert entry["who"] == LAB and entry["target"] == free
    assert entry["old"] == {"quarantine": ["failed 3 starts in a row"]} and entry["new"] == {"quarantine": []}
