"""The compose deployment users run (`make up`): the hub survives SIGKILL by itself, gpuhub comes
back after a simulated reboot and dockerd restarts (live-restore on and off) through what the
boot unit runs, and one student cannot take the others down (a kernel past its memory limit, a
fork bomb).

No hub is started by the tests: `make up` builds gpuhub/hub:latest from this tree and starts it
with docker-compose.yml, on settings of its own (tests/integration/compose.py). Who holds which
stand-in GPU is read from the engine (HostConfig.DeviceRequests of running containers), never
from gpuhub's bookkeeping.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests

from harness import dockerd
from harness.compose import (
    HUB_CONTAINER,
    NETWORK,
    ROOT,
    WATCHDOG_CONTAINER,
    Deployment,
    engine_view,
    holders,
    standin_gpus,
    who_holds,
)
from harness.hub import ensure_network
from harness.kernel import Kernel

from . import compose_support
from .browserless import UserSession
from .compose_support import require_nvidia_device_requests, up_or_skip

GPUS = standin_gpus(4)
RECOVERY_TIMEOUT = 90
PIDS_LIMIT = 512  # the fork bomb's ceiling: low enough that 2 cores reach it in seconds
users = compose_support.users  # fixture


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, docker_client, test_image):
    require_nvidia_device_requests(docker_client, test_image, GPUS[0])
    d = up_or_skip(
        Deployment(tmp_path_factory.mktemp("compose"), test_image, GPUS, {"GPUHUB_PIDS_LIMIT": str(PIDS_LIMIT)})
    )
    yield d
    d.down()


@pytest.fixture(autouse=True)
def hub_log_on_failure(request, deployment):
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- {deployment.log_path} ---\n{deployment.log_tail()}\n--- hub ---\n{deployment.hub_log(tail=120)}")


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
    deployment.start_all({cpu: "cpu", one: "gpu", two: "gpu-x2"})
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
    deployment.start_all({late: "gpu"})
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
    deployment.start_all({one: "gpu", two: "gpu-x2", cpu: "cpu"})
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
    deployment.start_all({late: "gpu"})
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


# --- one student cannot take the others down ---------------------------------------------------
def holdings_of(docker_client, users) -> dict[str, str]:
    """device -> user, for these users only: an earlier test's server may still be going away."""
    return {device: user for device, user in who_holds(docker_client).items() if user in users}


def home_page(deployment, user: str) -> str:
    """The hub's home page as the signed-in user's browser gets it (pages take no API tokens)."""
    browser = UserSession(deployment.url, user)
    browser.login(deployment.setting("GPUHUB_SHARED_PASSWORD")).raise_for_status()
    page = browser.http.get(f"{deployment.url}/hub/home", timeout=30)
    assert page.status_code == 200 and page.url.endswith("/hub/home"), page.url
    return page.text


def answers(deployment, user: str, auth: dict[str, str]) -> bool:
    """The user's server answers its own API through the hub's proxy."""
    try:
        return requests.get(f"{deployment.url}/user/{user}/api/status", headers=auth, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def user_container(docker_client, user: str):
    (c,) = docker_client.containers.list(filters={"label": f"gpuhub.user={user}"})
    return c


def test_a_kernel_past_the_memory_limit_is_killed_and_its_student_told_why_while_the_server_keeps_its_gpu(
    deployment, docker_client, users
):
    student, neighbour = users(2)
    deployment.start_all({student: "gpu", neighbour: "cpu"})
    held = holdings_of(docker_client, (student, neighbour))
    auth, neighbour_auth = deployment.user_token(student), deployment.user_token(neighbour)
    limit = deployment.setting("GPUHUB_MEM_LIMIT")

    with Kernel(deployment.url, student, auth["Authorization"].split()[1], timeout=180) as kernel:
        first = kernel.execute("print(6 * 7)")
        assert first.stdout == "42\n", (first, kernel.state())
        result = kernel.execute("x = bytearray(3 * 1024**3)\nprint('survived')", timeout=180)
    assert result.died and "survived" not in result.stdout, result

    def notice():
        r = requests.get(f"{deployment.url}/hub/api/gpuhub/notice", headers=auth, timeout=10)
        r.raise_for_status()
        return r.json()["notice"]

    deadline = time.monotonic() + 30
    while (told := notice()) is None:
        assert time.monotonic() < deadline, "no notice about the OOM kill"
        time.sleep(0.5)
    assert told["reason"] == "oom" and told["stop_at"] is None, told
    assert told["message"].startswith(f"Out of memory: limit {limit}"), told
    # What JupyterLab's banner polls (the server's extension asks the hub with the server's token).
    r = requests.get(f"{deployment.url}/user/{student}/api/gpuhub/notice", headers=auth, timeout=30)
    assert r.status_code == 200 and (r.json()["notice"] or {}).get("message") == told["message"], r.text
    # The hub's home page says it too.
    assert f"Out of memory: limit {limit}" in home_page(deployment, student)
    assert (
        "gpuhub_oom_kills_total"
        in requests.get(
            f"{deployment.url}/hub/metrics", headers={"Authorization": f"token {deployment.token}"}, timeout=10
        ).text
    )

    # Only the kernel died: the server answers and keeps its GPU; the neighbour never noticed.
    assert answers(deployment, student, auth) and answers(deployment, neighbour, neighbour_auth)
    assert holdings_of(docker_client, (student, neighbour)) == held
    with Kernel(deployment.url, student, auth["Authorization"].split()[1]) as kernel:
        assert kernel.execute("print('fresh kernel')").stdout == "fresh kernel\n"
    # The neighbour has no notice; the student's ends with the server, whose GPU then goes back.
    r = requests.get(f"{deployment.url}/hub/api/gpuhub/notice", headers=neighbour_auth, timeout=10)
    assert r.json()["notice"] is None
    deployment.stop_server(student)
    assert student not in who_holds(docker_client).values()


def test_a_fork_bomb_stops_at_the_pids_limit_and_the_hub_and_other_servers_keep_answering(
    deployment, docker_client, users
):
    student, neighbour = users(2)
    deployment.start_all({student: "gpu", neighbour: "gpu"})
    held = holdings_of(docker_client, (student, neighbour))
    auth, neighbour_auth = deployment.user_token(student), deployment.user_token(neighbour)
    bomber = user_container(docker_client, student)
    assert bomber.attrs["HostConfig"]["PidsLimit"] == PIDS_LIMIT

    with Kernel(deployment.url, student, auth["Authorization"].split()[1]) as kernel:
        lit = kernel.execute(
            "import subprocess\n"
            "bomb = subprocess.Popen(['bash', '-c', ':(){ :|:& };:'], stderr=subprocess.DEVNULL)\n"
            "print('lit')"
        )
        assert lit.stdout == "lit\n", lit
        most, slow = 0, []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = bomber.stats(stream=False)["pids_stats"].get("current", 0)
            most = max(most, pids)
            assert pids <= PIDS_LIMIT
            t0 = time.monotonic()
            assert deployment.healthy(), "the hub stopped answering during a student's fork bomb"
            assert answers(deployment, neighbour, neighbour_auth), "a neighbour's server stopped answering"
            slow.append(time.monotonic() - t0)
            time.sleep(1)
    print(
        f"fork bomb: {most} processes at most (limit {PIDS_LIMIT}); hub + neighbour answered in max {max(slow):.2f} s"
    )
    assert most >= PIDS_LIMIT * 0.9, f"the bomb reached only {most} processes: this test tested nothing"
    assert holdings_of(docker_client, (student, neighbour)) == held
    # The student gets out by stopping the server: everything in it ends, its GPU goes back.
    deployment.stop_server(student, timeout=120)
    assert student not in who_holds(docker_client).values()
    assert answers(deployment, neighbour, neighbour_auth)


# --- crash and reboot -------------------------------------------------------------------------
HUB_IP = "10.213.0.2"  # the Makefile's HUB_IP: the only address the firewall lets reach user servers


@pytest.fixture
def restartable_dockerd():
    why_not = dockerd.restartable()
    if why_not:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the reboot tests: {why_not}")
        pytest.skip(why_not)


def boot_argv() -> list[str]:
    """The command deploy/gpuhub.service runs at boot."""
    unit = (ROOT / "deploy" / "gpuhub.service").read_text().splitlines()
    (line,) = [ln for ln in unit if ln.startswith("ExecStart=")]
    return line.split("=", 1)[1].split()


def boot(deployment) -> None:
    """What the host runs at boot: the unit's `make boot`, on this deployment's settings."""
    assert boot_argv() == ["/usr/bin/make", "boot", "ENV_FILE=@ENV_FILE@"]
    deployment.make("boot", timeout=300)


def hub_may_reach_users() -> bool:
    """gpuhub's firewall rule letting the hub (and only it) talk to user servers is in place."""
    rule = ["DOCKER-USER", "-i", NETWORK, "-o", NETWORK, "-d", HUB_IP, "-j", "ACCEPT"]
    return subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode == 0


def wait_stopped_cleanly(deployment, docker_client, names: list[str], auth: dict[str, dict]) -> None:
    """The hub lists none of them as running, holds no device for them and says why on their page."""
    deadline = time.monotonic() + 120
    while any((u, "") in deployment.servers() for u in names):
        assert time.monotonic() < deadline, f"still listed: {deployment.servers()}"
        time.sleep(1)
    assert not set(names) & set(who_holds(docker_client).values())
    for user in names:
        assert "the host or Docker restarted while it ran" in home_page(deployment, user), f"{user}'s page"


def start_and_check_homes(deployment, sums: dict[str, str], auth: dict[str, dict], profiles: dict[str, str]) -> None:
    deployment.start_all(profiles)
    for user, digest in sums.items():
        assert deployment.file_sum(user, auth[user], "kept.bin") == digest, f"{user}'s file changed"


def test_after_a_simulated_reboot_the_boot_unit_brings_gpuhub_back_with_servers_stopped_cleanly_and_homes_intact(
    deployment, docker_client, users, restartable_dockerd
):
    cpu, gpu = users(2)
    profiles = {cpu: "cpu", gpu: "gpu"}
    deployment.start_all(profiles)
    auth = {u: deployment.user_token(u) for u in profiles}
    sums = {u: deployment.put_file(u, auth[u], "kept.bin") for u in profiles}
    assert hub_may_reach_users()

    # The reboot: every gpuhub container dies at once, the firewall is empty, dockerd starts afresh.
    for name in (WATCHDOG_CONTAINER, HUB_CONTAINER):
        docker_client.containers.get(name).kill()
    for c in docker_client.containers.list(filters={"label": "gpuhub.hub=gpuhub"}):
        c.kill()
    dockerd.stop()
    subprocess.run(["iptables", "-F"], check=True)
    subprocess.run(["iptables", "-t", "nat", "-F"], check=True)
    assert not hub_may_reach_users()
    dockerd.start()
    ensure_network(docker_client)  # the other tests' user network: its rules went with the flush too
    boot(deployment)

    assert deployment.healthy() and hub_may_reach_users()
    wait_stopped_cleanly(deployment, docker_client, list(profiles), auth)
    assert deployment.devices_held_metric() == 0
    # Starting again works (the hub reaches the new servers through the restored rules), homes intact.
    start_and_check_homes(deployment, sums, auth, profiles)


@pytest.mark.parametrize("live", [True, False], ids=["live-restore-on", "live-restore-off"])
def test_a_dockerd_restart_keeps_servers_with_live_restore_and_stops_them_cleanly_without(
    deployment, docker_client, users, restartable_dockerd, live
):
    cpu, gpu, later = users(3)
    profiles = {cpu: "cpu", gpu: "gpu"}
    with dockerd.live_restore(live):
        deployment.start_all(profiles)
        auth = {u: deployment.user_token(u) for u in profiles}
        sums = {u: deployment.put_file(u, auth[u], "kept.bin") for u in profiles}
        before = engine_view(docker_client)
        held = holdings_of(docker_client, profiles)
        dockerd.stop()
        dockerd.start()
        boot(deployment)  # the unit is PartOf docker.service: systemd runs it again after Docker's restart
        assert deployment.healthy() and hub_may_reach_users()
        if live:
            assert_engine_unchanged(docker_client, before)
            assert holdings_of(docker_client, profiles) == held
            deadline = time.monotonic() + 60
            while not deployment.recovered({(u, "") for u in profiles}, devices_held=1):
                assert time.monotonic() < deadline, deployment.servers()
                time.sleep(1)
            for user, digest in sums.items():
                assert answers(deployment, user, auth[user])
                assert deployment.file_sum(user, auth[user], "kept.bin") == digest
            deployment.start_all({later: "gpu"})  # the re-created hub talks to the new dockerd
        else:
            wait_stopped_cleanly(deployment, docker_client, list(profiles), auth)
            start_and_check_homes(deployment, sums, auth, profiles)
