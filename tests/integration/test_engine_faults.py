"""GPU leases under Docker faults: a real hub, real containers, and a fault-injecting Docker API proxy between them.

The hub's only way to Docker is `DockerFaultProxy`, which can fail, delay or hold
chosen calls. Every test judges from the engine's side (the stand-in NVIDIA hook's
record of which container got which devices, Docker's die events, `docker
inspect`), never from gpuhub's ledger: no device is ever held by two running
containers, and every limit holds.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import dockerd
from harness.hub import ROOT, TEST_HUB_ID, user_container
from spawner.container import LABEL_DEVICES, LABEL_HUB, LABEL_USER

from .docker_proxy import DockerFaultProxy, Fail, Hang
from .test_gpu_allocation import assert_never_shared, hook_starts, join

GPUS = [f"GPU-fa170000-0000-0000-0000-00000000000{i}" for i in range(3)]
GPU_CONFIG = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "default": True},
        {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}},
        {"slug": "gpu-x2", "display_name": "2 GPUs", "gpu": {"count": 2}},
    ],
    "gpus": [{"uuid": u, "model": "NVIDIA A100-SXM4-80GB"} for u in GPUS],
    "quota": {
        "default": {"profiles": ["cpu"]},
        "groups": {
            "students": {"profiles": ["cpu", "gpu"], "max_devices_per_user": 1},
            "course": {"profiles": ["cpu", "gpu"], "max_devices_per_group": 2, "max_devices_per_user": 4},
            "researchers": {"profiles": "*", "max_devices_per_user": 4},
        },
    },
}
FAST = """
c.Spawner.poll_interval = 2
c.GPUDockerSpawner.reconcile_interval = 2
c.GPUDockerSpawner.orphan_grace = 30
"""


@pytest.fixture(scope="module")
def proxy():
    with DockerFaultProxy() as p:
        yield p


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "gpus.json"
    path.write_text(json.dumps(GPU_CONFIG))
    return path


@pytest.fixture(scope="module")
def fault_hub(tmp_path_factory, test_image, test_network, chp_on_path, proxy, config_path):
    from harness.hub import Hub

    env = {"GPUHUB_GPU_CONFIG": str(config_path), "GPUHUB_MEM_LIMIT": "1G", "DOCKER_HOST": proxy.docker_host}
    h = Hub(tmp_path_factory.mktemp("hub"), test_image, env=env, extra_config=FAST).start()
    yield h
    proxy.clear()
    h.stop()


class DieEvents:
    """Docker's `die` events, followed live from the real socket (dockerd keeps only its last 256 events,
    fewer than a busy test makes); reconnects across a dockerd restart."""

    def __init__(self, client):
        self.client = client
        self.ends: dict[str, float] = {}
        self.closed = False
        self.since = time.time() - 1
        self._stream = None
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self):
        while not self.closed:
            try:
                self._stream = self.client.api.events(
                    since=self.since, decode=True, filters={"type": "container", "event": "die"}
                )
                for event in self._stream:
                    self.ends[event["id"]] = event["timeNano"] / 1e9
                    self.since = event["timeNano"] / 1e9
            except Exception:
                time.sleep(0.5)

    def intervals(self, since: float) -> list[tuple[str, float, float, str]]:
        """(device, start, end, container) for every container the stand-in hook saw get devices."""
        time.sleep(1)  # let the last events arrive
        out = []
        for cid, record in hook_starts(since).items():
            for device in record["visible_devices"].split(","):
                out.append((device, record["time"], self.ends.get(cid, float("inf")), cid))
        return out

    def close(self):
        self.closed = True
        if self._stream is not None:
            self._stream.close()


@pytest.fixture(scope="module")
def deaths(docker_client):
    watcher = DieEvents(docker_client)
    yield watcher
    watcher.close()


@pytest.fixture(autouse=True)
def no_faults_left(proxy, fault_hub):
    yield
    proxy.clear()
    for user in fault_hub.api("GET", "/users").json():
        for server in list(user["servers"]):
            fault_hub.stop_server(user["name"], server)


def devices_running(docker_client) -> dict[str, list[str]]:
    """device -> running containers that were given it (Docker's DeviceRequests)."""
    found: dict[str, list[str]] = {}
    for c in docker_client.containers.list(filters={"label": f"{LABEL_HUB}={TEST_HUB_ID}"}):
        for req in c.attrs["HostConfig"].get("DeviceRequests") or []:
            for device in req.get("DeviceIDs") or []:
                found.setdefault(device, []).append(c.name)
    return found


def assert_no_device_twice_now(docker_client):
    twice = {d: names for d, names in devices_running(docker_client).items() if len(names) > 1}
    assert not twice, f"devices held by two running containers: {twice}"


def fill(hub, users):
    """Start servers that hold GPUs, one after another, and wait until they run."""
    for user, profile in users:
        assert hub.start_server(user, options={"profile": profile}).status_code in (201, 202)
        hub.wait_ready(user)


def pending(hub, user, server="") -> bool:
    model = hub.user_model(user)["servers"].get(server)
    return bool(model and model["pending"] == "spawn")


def test_a_500_on_inspect_while_the_hub_polls_keeps_the_server_and_its_gpu(fault_hub, proxy, docker_client, deaths):
    t0 = time.time()
    join(fault_hub, "students", ["gpuhubt-f1a", "gpuhubt-f1b"])
    join(fault_hub, "researchers", ["gpuhubt-f1r"])
    fill(fault_hub, [("gpuhubt-f1a", "gpu"), ("gpuhubt-f1r", "gpu-x2")])
    alice = user_container(docker_client, "gpuhubt-f1a")
    rule = proxy.add("GET", rf"^/containers/{alice.id}/json$", Fail(500))
    fault_hub.start_server("gpuhubt-f1b", options={"profile": "gpu"})
    rule.wait_hit(3, timeout=30)  # several of JupyterHub's polls answered 500
    time.sleep(2)
    assert fault_hub.user_model("gpuhubt-f1a")["servers"][""]["ready"]
    assert pending(fault_hub, "gpuhubt-f1b"), "the waiter got a GPU that a running container holds"
    assert_no_device_twice_now(docker_client)
    proxy.remove(rule)
    fault_hub.stop_server("gpuhubt-f1a")
    fault_hub.wait_ready("gpuhubt-f1b")
    assert_never_shared(deaths.intervals(t0))


def test_a_slow_start_then_delete_while_pending_removes_the_container_before_the_gpu_moves(
    fault_hub, proxy, docker_client, deaths
):
    t0 = time.time()
    join(fault_hub, "students", ["gpuhubt-f2a", "gpuhubt-f2b"])
    join(fault_hub, "researchers", ["gpuhubt-f2r"])
    fill(fault_hub, [("gpuhubt-f2r", "gpu-x2")])
    rule = proxy.add("POST", r"^/containers/[0-9a-f]+/start$", Hang(), times=1)
    fault_hub.start_server("gpuhubt-f2a", options={"profile": "gpu"})
    rule.wait_hit(timeout=60)
    assert fault_hub.api("DELETE", "/users/gpuhubt-f2a/server").status_code in (202, 204)
    fault_hub.start_server("gpuhubt-f2b", options={"profile": "gpu"})
    fault_hub.wait_ready("gpuhubt-f2b")
    rule.release()  # the held `docker start` reaches dockerd late
    time.sleep(3)
    assert user_container(docker_client, "gpuhubt-f2a", include_stopped=True) is None
    assert_no_device_twice_now(docker_client)
    assert_never_shared(deaths.intervals(t0))


def test_a_failed_stop_then_start_removes_the_old_container_first(fault_hub, proxy, docker_client, deaths):
    t0 = time.time()
    join(fault_hub, "students", ["gpuhubt-f3a", "gpuhubt-f3b"])
    join(fault_hub, "researchers", ["gpuhubt-f3r"])
    fill(fault_hub, [("gpuhubt-f3a", "gpu"), ("gpuhubt-f3r", "gpu-x2")])
    old = user_container(docker_client, "gpuhubt-f3a")
    stop = proxy.add("POST", rf"^/containers/{old.id}/stop$", Fail(500), times=1)
    fault_hub.api("DELETE", "/users/gpuhubt-f3a/server")
    stop.wait_hit(timeout=30)
    deadline = time.monotonic() + 30
    while fault_hub.user_model("gpuhubt-f3a")["servers"] and time.monotonic() < deadline:
        time.sleep(0.3)
    old.reload()
    assert old.status == "running"  # JupyterHub forgot it; Docker did not stop it
    fault_hub.start_server("gpuhubt-f3b", options={"profile": "gpu"})
    time.sleep(4)
    assert pending(fault_hub, "gpuhubt-f3b"), "the waiter got the GPU of a container that still runs"
    # Starting again removes the old container first; its GPU then goes to the waiter ahead in the queue.
    fault_hub.start_server("gpuhubt-f3a", options={"profile": "gpu"})
    fault_hub.wait_ready("gpuhubt-f3b")
    assert old.id not in {c.id for c in docker_client.containers.list(all=True)}
    assert pending(fault_hub, "gpuhubt-f3a")
    fault_hub.stop_server("gpuhubt-f3b")
    fault_hub.wait_ready("gpuhubt-f3a")
    assert_no_device_twice_now(docker_client)
    assert_never_shared(deaths.intervals(t0))


def test_a_stop_and_restart_during_a_reconcile_pass_keeps_the_new_lease(fault_hub, proxy, docker_client, deaths):
    t0 = time.time()
    join(fault_hub, "students", ["gpuhubt-f4a", "gpuhubt-f4b"])
    join(fault_hub, "researchers", ["gpuhubt-f4r"])
    fill(fault_hub, [("gpuhubt-f4a", "gpu"), ("gpuhubt-f4r", "gpu-x2")])
    # The reconcile pass lists every container of the hub (a start's clean-up lists one user's only).
    listing = proxy.add("GET", r"^/containers/json$", Hang(), times=1, target=r"^(?!.*gpuhub\.user).*$")
    listing.wait_hit(timeout=30)
    fault_hub.stop_server("gpuhubt-f4a")
    fault_hub.start_server("gpuhubt-f4a", options={"profile": "gpu"})
    fault_hub.wait_ready("gpuhubt-f4a")
    listing.release()
    time.sleep(5)  # the stale pass applies, then fresh passes run
    fault_hub.start_server("gpuhubt-f4b", options={"profile": "gpu"})
    time.sleep(4)
    assert pending(fault_hub, "gpuhubt-f4b"), "the restarted server's GPU was handed out again"
    assert fault_hub.user_model("gpuhubt-f4a")["servers"][""]["ready"]
    assert_no_device_twice_now(docker_client)
    assert_never_shared(deaths.intervals(t0))


def test_eight_parallel_named_servers_cannot_pass_max_devices_per_user(fault_hub, docker_client):
    user = "gpuhubt-f5"
    join(fault_hub, "students", [user])
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda i: fault_hub.api("POST", f"/users/{user}/servers/s{i}", json={"profile": "gpu"}).status_code,
                range(8),
            )
        )
    # One starts; the others are refused over quota (403), or by JupyterHub's own named-server limit (400).
    assert sum(a in (201, 202) for a in answers) == 1 and set(answers) <= {201, 202, 400, 403}, answers
    assert answers.count(403) >= 3, answers
    time.sleep(3)
    with_gpus = [c for c in docker_client.containers.list(all=True, filters={"label": f"{LABEL_USER}={user}"})]
    assert sum(bool(c.attrs["HostConfig"].get("DeviceRequests")) for c in with_gpus) == 1


def test_eight_parallel_users_cannot_pass_a_group_maximum(fault_hub, docker_client):
    users = [f"gpuhubt-f6u{i}" for i in range(8)]
    join(fault_hub, "course", users)
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda u: fault_hub.api("POST", f"/users/{u}/server", json={"profile": "gpu"}).status_code,
                users,
            )
        )
    assert answers.count(403) == 6, answers
    time.sleep(3)
    holding = [u for u in users if user_container(docker_client, u, include_stopped=True) is not None]
    assert len(holding) == 2


@pytest.fixture
def live_restore():
    """dockerd with live-restore on, restored afterwards. Needs root and a dockerd started by .ci/start-dockerd."""
    why_not = dockerd.restartable()
    if why_not:
        pytest.skip(why_not)
    with dockerd.live_restore(True):
        yield


docker_info = dockerd.info
wait_for = dockerd.wait_for


def test_a_dockerd_restart_with_live_restore_keeps_servers_and_their_gpus(
    fault_hub, docker_client, live_restore, deaths
):
    t0 = time.time()
    join(fault_hub, "students", ["gpuhubt-f8a", "gpuhubt-f8b"])
    join(fault_hub, "researchers", ["gpuhubt-f8r"])
    fill(fault_hub, [("gpuhubt-f8a", "gpu"), ("gpuhubt-f8r", "gpu-x2")])
    before = devices_running(docker_client)
    fault_hub.start_server("gpuhubt-f8b", options={"profile": "gpu"})
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"], check=True)
    wait_for(lambda: subprocess.run(["pidof", "dockerd"]).returncode != 0, 60, "dockerd did not stop")
    time.sleep(6)  # several of JupyterHub's polls meet no Docker at all
    subprocess.run([str(ROOT / ".ci" / "start-dockerd")], check=True, capture_output=True)
    wait_for(lambda: bool(docker_info()), 60, "dockerd did not come back")
    time.sleep(4)
    assert devices_running(docker_client) == before  # live-restore: the same containers, the same devices
    for user in ("gpuhubt-f8a", "gpuhubt-f8r"):
        assert fault_hub.user_model(user)["servers"][""]["ready"], user
    assert pending(fault_hub, "gpuhubt-f8b")
    fault_hub.stop_server("gpuhubt-f8a")
    fault_hub.wait_ready("gpuhubt-f8b")
    assert_no_device_twice_now(docker_client)
    assert_never_shared(deaths.intervals(t0))


def test_a_hub_restart_after_a_held_device_left_the_inventory_keeps_it_out(
    fault_hub, config_path, docker_client, deaths
):
    t0 = time.time()
    join(fault_hub, "researchers", ["gpuhubt-f7r"])
    join(fault_hub, "students", ["gpuhubt-f7a", "gpuhubt-f7b"])
    fill(fault_hub, [("gpuhubt-f7r", "gpu-x2")])
    held = user_container(docker_client, "gpuhubt-f7r").labels[LABEL_DEVICES].split(",")
    fault_hub.stop()
    smaller = {**GPU_CONFIG, "gpus": [g for g in GPU_CONFIG["gpus"] if g["uuid"] != held[0]]}
    config_path.write_text(json.dumps(smaller))
    try:
        fault_hub.start()
        assert fault_hub.user_model("gpuhubt-f7r")["servers"][""]["ready"]
        fill(fault_hub, [("gpuhubt-f7a", "gpu")])
        fault_hub.start_server("gpuhubt-f7b", options={"profile": "gpu"})
        time.sleep(4)
        assert pending(fault_hub, "gpuhubt-f7b"), f"{held[1]} (held with a device that left) was handed out"
        assert_no_device_twice_now(docker_client)
        fault_hub.stop_server("gpuhubt-f7r")
        fault_hub.wait_ready("gpuhubt-f7b")
    finally:
        config_path.write_text(json.dumps(GPU_CONFIG))
    assert_never_shared(deaths.intervals(t0))
