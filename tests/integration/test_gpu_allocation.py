"""GPU allocation end to end: a real hub, real Docker, the stand-in NVIDIA hook.

Who held which device when is read from the hook's record and Docker's events,
never from gpuhub's own ledger.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.hub import SHARED_PASSWORD, user_container
from spawner import quota
from spawner.container import LABEL_DEVICES

from .browserless import UserSession
from .test_gpu_request_path import HOOK_LOG

GPUS = [f"GPU-7e570000-0000-0000-0000-00000000000{i}" for i in range(4)]
SLICES = [f"MIG-7e570000-0000-0000-0000-0000000000a{i}" for i in range(2)]
GPU_CONFIG = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "default": True},
        {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}},
        {"slug": "mig", "display_name": "1 MIG slice", "gpu": {"count": 1, "mig_profile": "1g.10gb"}},
        {"slug": "gpu-x2", "display_name": "2 GPUs", "gpu": {"count": 2}},
    ],
    "gpus": [{"uuid": u, "model": "NVIDIA A100-SXM4-80GB"} for u in GPUS]
    + [
        {"uuid": u, "model": "NVIDIA H100 80GB HBM3", "mig_profile": "1g.10gb", "parent": "GPU-7e57ffff"}
        for u in SLICES
    ],
    "quota": {
        "default": {"profiles": ["cpu"]},
        "groups": {
            "students": {"profiles": ["cpu", "gpu", "mig"], "max_devices_per_user": 1},
            "researchers": {"profiles": "*", "max_devices_per_user": 4, "priority": 10},
        },
    },
}


@pytest.fixture
def gpu_hub(make_hub, tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps(GPU_CONFIG))
    return make_hub(env={"GPUHUB_GPU_CONFIG": str(path), "GPUHUB_MEM_LIMIT": "1G"}).start()


def join(hub, group, users):
    hub.api("POST", "/users", json={"usernames": users})
    r = hub.api("POST", f"/groups/{group}")
    assert r.status_code in (201, 409), r.text
    r = hub.api("POST", f"/groups/{group}/users", json={"users": users})
    assert r.ok, r.text


def devices_of(docker_client, username):
    found = user_container(docker_client, username)
    return found.labels[LABEL_DEVICES].split(",") if found else None


def hook_starts(since: float) -> dict[str, dict]:
    with open(HOOK_LOG) as f:
        return {r["id"]: r for r in map(json.loads, f) if r["time"] >= since and r["visible_devices"] != "void"}


def holding_intervals(docker_client, since: float) -> list[tuple[str, float, float, str]]:
    """(device, start, end, container) for every container the hook saw get devices since `since`."""
    starts = hook_starts(since)
    ends = {}
    for event in docker_client.api.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        decode=True,
        filters={"type": "container", "event": "die"},
    ):
        ends[event["id"]] = event["timeNano"] / 1e9
    out = []
    for cid, record in starts.items():
        for device in record["visible_devices"].split(","):
            out.append((device, record["time"], ends.get(cid, float("inf")), cid))
    return out


def assert_never_shared(intervals):
    by_device = {}
    for device, start, end, cid in intervals:
        by_device.setdefault(device, []).append((start, end, cid))
    for device, spans in by_device.items():
        spans.sort()
        for (_, e1, c1), (s2, _, c2) in zip(spans, spans[1:], strict=False):
            assert s2 >= e1, f"{device} held by {c1[:12]} and {c2[:12]} at once"


def test_a_storm_of_three_users_per_gpu_never_shares_a_device_and_waiters_go_in_order(gpu_hub, docker_client):
    t0 = time.time()
    users = [f"gpuhubt-storm{i:02d}" for i in range(12)]
    join(gpu_hub, "students", users)
    with ThreadPoolExecutor(4) as pool:
        first = list(pool.map(lambda u: gpu_hub.start_server(u, options={"profile": "gpu"}).status_code, users[:4]))
    assert all(code in (201, 202) for code in first)
    for u in users[:4]:
        gpu_hub.wait_ready(u)
    for u in users[4:]:  # one at a time, so their queue order is known
        assert gpu_hub.start_server(u, options={"profile": "gpu"}).status_code == 202
        time.sleep(0.3)
    held = {u: devices_of(docker_client, u) for u in users[:4]}
    assert sorted(d for ds in held.values() for d in ds) == sorted(GPUS)

    served = []
    for leaver in users[:8]:
        gpu_hub.stop_server(leaver)
        nxt = users[len(served) + 4]
        gpu_hub.wait_ready(nxt)
        served.append(nxt)
    assert served == users[4:12], "waiters were not served first come, first served"
    for u in users[8:]:
        gpu_hub.stop_server(u)
    intervals = holding_intervals(docker_client, t0)
    assert len({cid for *_, cid in intervals}) == 12
    assert_never_shared(intervals)


def test_the_queue_position_is_shown_while_waiting(gpu_hub):
    users = [f"gpuhubt-q{i}" for i in range(4)]
    join(gpu_hub, "students", users)
    for u in users[:2]:
        gpu_hub.start_server(u, options={"profile": "mig"})
    for u in users[:2]:
        gpu_hub.wait_ready(u)
    gpu_hub.start_server(users[2], options={"profile": "mig"})
    gpu_hub.start_server(users[3], options={"profile": "mig"})
    messages = []
    with gpu_hub.api("GET", f"/users/{users[3]}/server/progress", stream=True, timeout=10) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                messages.append(json.loads(line[5:])["message"])
                if "position" in messages[-1]:
                    break
    assert "Waiting for a GPU (1g.10gb): position 2 of 2" in messages
    # a queued request counts against the quota: no second place in the queue past the limit
    r = gpu_hub.start_server(users[3], server="another", options={"profile": "mig"})
    assert r.status_code == 403 and "your limit is 1" in r.json()["message"]
    gpu_hub.stop_server(users[2])  # leaving the queue moves the next one up
    gpu_hub.stop_server(users[0])
    gpu_hub.wait_ready(users[3])
    for u in (users[1], users[3]):
        gpu_hub.stop_server(u)


def test_quota_is_enforced_on_the_server_and_changes_at_runtime(gpu_hub):
    join(gpu_hub, "students", ["gpuhubt-alice"])
    r = gpu_hub.start_server("gpuhubt-alice", options={"profile": "gpu-x2"})
    assert r.status_code == 403 and "your quota does not include the profile 'gpu-x2'" in r.json()["message"]
    r = gpu_hub.start_server("gpuhubt-alice", options={"profile": "gpu", "image": "evil/root:latest"})
    # DockerSpawner's image option: refused unless an admin lists images in `allowed_images`.
    assert r.status_code == 400 and "Specifying image to launch is not allowed" in r.json()["message"]
    r = gpu_hub.start_server("gpuhubt-alice", options={"profile": "nope"})
    assert r.status_code == 400 and "unknown profile 'nope'" in r.json()["message"]

    # A lab admin takes GPUs away from students at runtime ...
    r = gpu_hub.api("PUT", "/groups/students/properties", json={quota.PROPERTY: {"profiles": ["cpu"]}})
    assert r.ok, r.text
    r = gpu_hub.start_server("gpuhubt-alice", options={"profile": "gpu"})
    assert r.status_code == 403
    # ... a malformed value grants nothing and says why ...
    gpu_hub.api("PUT", "/groups/students/properties", json={quota.PROPERTY: {"max_devices_per_user": "lots"}})
    r = gpu_hub.start_server("gpuhubt-alice", options={"profile": "gpu"})
    assert r.status_code == 403 and "max_devices_per_user must be a whole number" in r.json()["message"]
    # ... and gives them back.
    gpu_hub.api("PUT", "/groups/students/properties", json={quota.PROPERTY: {"max_devices_per_user": 1}})
    r = gpu_hub.start_server("gpuhubt-alice", options={"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    gpu_hub.wait_ready("gpuhubt-alice")
    r = gpu_hub.start_server("gpuhubt-alice", server="second", options={"profile": "mig"})
    assert r.status_code == 403 and "your limit is 1" in r.json()["message"]
    gpu_hub.stop_server("gpuhubt-alice")


def test_a_hub_killed_mid_storm_comes_back_with_every_server_and_hands_out_nothing_twice(gpu_hub, docker_client):
    t0 = time.time()
    users = [f"gpuhubt-kill{i}" for i in range(6)]
    join(gpu_hub, "students", users)
    for u in users:
        gpu_hub.start_server(u, options={"profile": "gpu"})
    for u in users[:4]:
        gpu_hub.wait_ready(u)
    before = {u: devices_of(docker_client, u) for u in users[:4]}

    gpu_hub.kill()
    gpu_hub.reap()
    gpu_hub.start()

    for u in users[:4]:
        assert gpu_hub.user_model(u)["servers"][""]["ready"], u
        assert devices_of(docker_client, u) == before[u]
    # The waiters' spawns died with the hub; asked again, they must wait, not share.
    for u in users[4:]:
        gpu_hub.api("DELETE", f"/users/{u}/server")
        time.sleep(1)
        assert gpu_hub.start_server(u, options={"profile": "gpu"}).status_code == 202
    time.sleep(3)
    assert all(devices_of(docker_client, u) is None for u in users[4:])
    gpu_hub.stop_server(users[0])
    gpu_hub.wait_ready(users[4])
    assert devices_of(docker_client, users[4]) == before[users[0]]
    for u in users[1:5]:
        gpu_hub.stop_server(u)
    gpu_hub.stop_server(users[5]) if gpu_hub.user_model(users[5])["servers"] else None
    assert_never_shared(holding_intervals(docker_client, t0))


def test_the_spawn_form_offers_allowed_profiles_with_live_availability(gpu_hub):
    from harness.hub import SHARED_PASSWORD

    from .browserless import UserSession

    join(gpu_hub, "students", ["gpuhubt-form", "gpuhubt-holder"])
    gpu_hub.start_server("gpuhubt-holder", options={"profile": "gpu"})
    gpu_hub.wait_ready("gpuhubt-holder")
    student = UserSession(gpu_hub.url, "gpuhubt-form")
    page = student.login(SHARED_PASSWORD)
    assert page.url.endswith("/hub/spawn") and 'name="profile"' in page.text
    assert "1 GPU" in page.text and "3 of 4 free" in page.text
    assert "1 MIG slice" in page.text and "2 of 2 free" in page.text
    assert "2 GPUs" not in page.text, "a profile outside the student's quota is offered"
    # choosing in the form starts that profile
    r = student.http.post(
        f"{gpu_hub.url}/hub/spawn/gpuhubt-form", data={"profile": "mig", "_xsrf": student._xsrf("/hub/")}
    )
    assert r.ok
    gpu_hub.wait_ready("gpuhubt-form")
    metrics = gpu_hub.api("GET", "/../metrics").text
    assert 'gpuhub_devices_total{mig_profile="",model="NVIDIA A100-SXM4-80GB"} 4.0' in metrics
    assert 'gpuhub_devices_held{mig_profile="1g.10gb",model="NVIDIA H100 80GB HBM3"} 1.0' in metrics
    assert 'gpuhub_devices_held{mig_profile="",model="NVIDIA A100-SXM4-80GB"} 1.0' in metrics
    assert "gpuhub_queue_length 0.0" in metrics
    for u in ("gpuhubt-form", "gpuhubt-holder"):
        gpu_hub.stop_server(u)


def test_a_waiter_fails_clearly_after_the_wait_timeout_and_leaves_the_queue(make_hub, tmp_path):
    path = tmp_path / "gpus.json"
    one_gpu = {
        "profiles": GPU_CONFIG["profiles"][:2],
        "gpus": GPU_CONFIG["gpus"][:1],
        "quota": {"groups": {"students": {"profiles": ["gpu"]}}},
    }
    path.write_text(json.dumps(one_gpu))
    hub = make_hub(env={"GPUHUB_GPU_CONFIG": str(path), "GPUHUB_GPU_WAIT_TIMEOUT": "3"}).start()
    join(hub, "students", ["gpuhubt-first", "gpuhubt-late"])
    hub.start_server("gpuhubt-first", options={"profile": "gpu"})
    hub.wait_ready("gpuhubt-first")
    hub.start_server("gpuhubt-late", options={"profile": "gpu"})
    events = hub.progress("gpuhubt-late", timeout=30)
    assert events[-1].get("failed")
    assert "No GPU became free within 3 s; try again later" in events[-1]["message"]
    assert "gpuhub_queue_length 0.0" in hub.api("GET", "/../metrics").text
    hub.stop_server("gpuhubt-first")


def test_a_browser_spawn_without_a_form_leaves_the_queue_when_nobody_watches_but_a_rest_spawn_stays(make_hub, tmp_path):
    # One profile: JupyterHub spawns straight from GET /hub/spawn, without the options form.
    path = tmp_path / "gpus.json"
    only_gpu = {
        "profiles": [{"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}, "default": True}],
        "gpus": GPU_CONFIG["gpus"][:1],
    }
    path.write_text(json.dumps(only_gpu))
    hub = make_hub(
        env={"GPUHUB_GPU_CONFIG": str(path)}, extra_config="c.GPUDockerSpawner.queue_abandon_after = 5\n"
    ).start()
    hub.start_server("gpuhubt-holder")
    hub.wait_ready("gpuhubt-holder")
    browser = UserSession(hub.url, "gpuhubt-tab")
    assert browser.login(SHARED_PASSWORD).ok
    r = browser.http.get(f"{hub.url}/hub/spawn", allow_redirects=False, timeout=30)
    assert r.status_code in (302, 303) and "spawn-pending" in r.headers["Location"]
    assert hub.start_server("gpuhubt-api").status_code == 202  # queued behind the browser spawn
    time.sleep(10)  # the tab was closed: nobody follows the progress page
    assert hub.user_model("gpuhubt-tab")["servers"] == {}
    assert hub.user_model("gpuhubt-api")["servers"][""]["pending"] == "spawn"
    hub.stop_server("gpuhubt-holder")
    hub.wait_ready("gpuhubt-api")
    hub.stop_server("gpuhubt-api")
