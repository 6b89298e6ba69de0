"""The compose deployment users run (`make up`): the hub survives SIGKILL by itself.

No hub is started by the tests: `make up` builds gpuhub/hub:latest from this tree and starts it
with docker-compose.yml, on settings of its own (tests/integration/compose.py). Who holds which
stand-in GPU is read from the engine (HostConfig.DeviceRequests of running containers), never
from gpuhub's bookkeeping.
"""

from __future__ import annotations

import os
import subprocess
import time

import docker
import pytest

from harness.compose import (
    HUB_CONTAINER,
    Deployment,
    EngineBusy,
    engine_view,
    holders,
    standin_gpus,
    unique_users,
    who_holds,
)

GPUS = standin_gpus(4)
RECOVERY_TIMEOUT = 90


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, docker_client, test_image):
    _require_nvidia_device_requests(docker_client, test_image)
    d = Deployment(tmp_path_factory.mktemp("compose"), test_image, GPUS)
    try:
        d.up()
    except EngineBusy as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{e}; these tests run their own deployment under the same names")
    except BaseException:
        print(f"--- make up ---\n{d.log_tail()}\n--- hub ---\n{d.hub_log()}")
        d.down()
        raise
    yield d
    d.down()


@pytest.fixture
def users(deployment):
    """Fresh user names; their servers are stopped after the test, whatever happened."""
    made: list[str] = []

    def make(count: int) -> list[str]:
        made.extend(unique_users(count))
        return made[-count:]

    yield make
    for user in made:
        try:
            deployment.stop_server(user)
        except Exception:
            pass  # down() removes the containers anyway


@pytest.fixture(autouse=True)
def hub_log_on_failure(request, deployment):
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- {deployment.log_path} ---\n{deployment.log_tail()}\n--- hub ---\n{deployment.hub_log(tail=120)}")


def _require_nvidia_device_requests(client, image):
    """Skip where dockerd has no nvidia driver (no stand-in hook), except in CI, where that is a failure."""
    probe = client.containers.create(
        image,
        ["true"],
        name=unique_users(1, "probe")[0],
        network_mode="none",
        device_requests=[docker.types.DeviceRequest(driver="nvidia", device_ids=[GPUS[0]], capabilities=[["gpu"]])],
    )
    try:
        probe.start()
    except docker.errors.APIError as e:
        if "could not select device driver" in str(e) and not os.environ.get("CI"):
            pytest.skip("this dockerd has no nvidia driver: start it with .ci/start-dockerd (stand-in hook on PATH)")
        raise
    finally:
        probe.remove(force=True)


def start_all(deployment, plan: dict[str, str]) -> None:
    for user, profile in plan.items():
        deployment.start_server(user, profile)
    for user in plan:
        deployment.wait_ready(user)


def assert_recovers_by_itself(deployment, killed_at: float, servers: set, devices_held: int) -> float:
    """Nothing here touches the hub: it must come back (hub-watchdog) and find everything again."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while not deployment.recovered(servers, devices_held):
        assert time.monotonic() < deadline, (
            f"hub not recovered {RECOVERY_TIMEOUT} s after SIGKILL (started {deployment.hub_starts(killed_at)} times,"
            f" running: {deployment.hub_state()['Running']})\n{deployment.hub_log(since=killed_at)[-4000:]}"
        )
        time.sleep(0.2)
    return time.time() - killed_at


def assert_no_restart_loop(deployment, killed_at: float, kills: int, watch: float = 5) -> None:
    """Started once per kill, then running and answering for `watch` seconds without another start."""
    started_at = deployment.hub_state()["StartedAt"]
    deadline = time.monotonic() + watch
    while time.monotonic() < deadline:
        assert deployment.healthy(), "the hub stopped answering after it had recovered"
        time.sleep(0.5)
    state = deployment.hub_state()
    assert state["Running"] and state["StartedAt"] == started_at, "the hub restarted again after it had recovered"
    starts = deployment.hub_starts(since=killed_at)
    assert starts == kills, f"the hub was started {starts} times after {kills} SIGKILL(s): a restart loop"


def assert_engine_unchanged(docker_client, before: dict) -> None:
    """The same user containers run, never restarted, and each device is held by the same container."""
    now = engine_view(docker_client)
    for cid, held in before.items():
        assert cid in now, f"the container of {held.user} is gone"
        assert now[cid].started_at == held.started_at, f"the container of {held.user} was restarted"
    assert holders(now) == holders(before)


def test_a_sigkilled_hub_comes_back_by_itself_with_every_server_and_device_where_it_was(
    deployment, docker_client, users
):
    cpu, one, two, late, waiting = users(5)
    start_all(deployment, {cpu: "cpu", one: "gpu", two: "gpu-x2"})
    before = engine_view(docker_client)
    held = who_holds(docker_client)
    assert sorted(held.values()) == sorted([one, two, two])

    killed_at = deployment.kill_hub()
    took = assert_recovers_by_itself(deployment, killed_at, {(u, "") for u in (cpu, one, two)}, devices_held=3)
    print(f"hub recovered {took:.1f} s after SIGKILL")
    assert "Found proxy pid file" not in deployment.hub_log(since=killed_at), "the proxy pid file outlived the hub"
    assert_engine_unchanged(docker_client, before)
    assert_no_restart_loop(deployment, killed_at, kills=1)

    # The rebuilt ledger knows what is held: a new spawn gets the one free device, the next one waits.
    (free,) = set(GPUS) - set(held)
    start_all(deployment, {late: "gpu"})
    assert who_holds(docker_client) == {**held, free: late}
    deployment.start_server(waiting, "gpu")
    events = deployment.progress(waiting, lambda e: "Waiting for a GPU" in e.get("message", ""), timeout=60)
    assert "Waiting for a GPU" in events[-1]["message"], events
    (released,) = [d for d, user in held.items() if user == one]
    deployment.stop_server(one)
    deployment.wait_ready(waiting)
    assert who_holds(docker_client) == {**held, free: late, released: waiting}


def test_a_hub_killed_twice_in_a_row_still_comes_back_without_a_restart_loop(deployment, docker_client, users):
    one, two, cpu, late = users(4)
    start_all(deployment, {one: "gpu", two: "gpu-x2", cpu: "cpu"})
    before = engine_view(docker_client)
    held = who_holds(docker_client)
    assert len(held) == 3

    first = deployment.kill_hub()
    deployment.wait_restarted(after=first)
    killed_at = deployment.kill_hub()  # while it is still starting
    took = assert_recovers_by_itself(deployment, killed_at, {(u, "") for u in (one, two, cpu)}, devices_held=3)
    print(f"hub recovered {took:.1f} s after the second SIGKILL")
    assert_engine_unchanged(docker_client, before)
    assert_no_restart_loop(deployment, first, kills=2)

    (free,) = set(GPUS) - set(held)
    start_all(deployment, {late: "gpu"})
    assert who_holds(docker_client) == {**held, free: late}


def test_a_hub_stopped_on_purpose_stays_stopped_until_started(deployment):
    # `make down` and `docker stop` send SIGTERM first; only a kill without it is a crash to undo.
    subprocess.run(["docker", "stop", HUB_CONTAINER], check=True, capture_output=True)
    time.sleep(3)
    assert not deployment.hub_state()["Running"], "the hub was started again after a deliberate stop"
    started = time.time()
    subprocess.run(["docker", "start", HUB_CONTAINER], check=True, capture_output=True)
    deployment.wait_restarted(after=started)
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while not deployment.healthy():
        assert time.monotonic() < deadline, deployment.hub_log(since=started)
        time.sleep(0.2)
