"""The fault-injecting Docker proxy, against the real dockerd: what passes through is
untouched, and each kind of fault does what tests rely on it to do."""

from __future__ import annotations

import os
import threading
import time

import docker
import pytest

from .docker_proxy import Delay, DockerFaultProxy, Fail, Hang

LABEL = {"gpuhub.test": "docker-proxy"}
# Images with a `sleep`: the notebook test image if built, else the base it is built from.
CANDIDATE_IMAGES = [os.environ.get("GPUHUB_TEST_IMAGE", "gpuhub/notebook:cpu"), "gpuhub/offline-base:bookworm"]


@pytest.fixture
def proxy():
    with DockerFaultProxy() as p:
        yield p


@pytest.fixture
def client(proxy):
    # Short timeout: a fault that leaks past its rule shows up as a failure, not a stalled run.
    c = docker.DockerClient(base_url=proxy.docker_host, version="auto", timeout=15)
    yield c
    c.close()


@pytest.fixture(scope="module")
def image(docker_client):
    for name in CANDIDATE_IMAGES:
        try:
            docker_client.images.get(name)
            return name
        except docker.errors.ImageNotFound:
            continue
    pytest.skip(f"none of {CANDIDATE_IMAGES} exists (`make test-images` builds them); container cases need one")


@pytest.fixture
def container(docker_client, image):
    """A created, not started, container, made directly on dockerd so no rule touches its making."""
    c = docker_client.containers.create(image, ["sleep", "60"], labels=LABEL, stop_signal="SIGKILL")
    yield c
    c.remove(force=True)


def test_calls_without_rules_reach_dockerd_unchanged(proxy, client, docker_client, image):
    assert client.version()["ApiVersion"] == docker_client.version()["ApiVersion"]
    assert {c.id for c in client.containers.list(all=True)} == {c.id for c in docker_client.containers.list(all=True)}
    out = client.containers.run(image, ["sh", "-c", "echo out; echo err >&2"], labels=LABEL, remove=True)
    assert out == b"out\n"
    assert all(isinstance(entry.outcome, int) and entry.outcome < 400 for entry in proxy.log), proxy.log
    assert proxy.socket_path and oct(os.stat(proxy.socket_path).st_mode & 0o777) == "0o666"


def test_a_fail_rule_answers_docker_style_500_without_asking_dockerd(proxy, client, container):
    rule = proxy.add("GET", r"^/containers/[^/]+/json$", Fail(500, "engine on fire"))
    with pytest.raises(docker.errors.APIError) as err:
        client.containers.get(container.id)
    assert err.value.status_code == 500
    assert err.value.explanation == "engine on fire"
    assert rule.hits == 1
    # The version prefix is stripped before matching, and other paths are left alone (the
    # low-level list: containers.list() would inspect each container through the rule).
    assert proxy.log[-1].path == f"/containers/{container.id}/json"
    assert [c["Id"] for c in client.api.containers(all=True, filters={"id": container.id})] == [container.id]


def test_a_rule_with_times_1_affects_only_the_first_matching_call(proxy, client, container):
    rule = proxy.add("GET", r"^/containers/[^/]+/json$", Fail(500), times=1)
    with pytest.raises(docker.errors.APIError):
        client.containers.get(container.id)
    assert client.containers.get(container.id).id == container.id
    assert rule.hits == 1
    assert not rule.active


def test_a_delay_rule_forwards_the_call_after_at_least_the_delay(proxy, client, container):
    proxy.add("GET", r"^/containers/[^/]+/json$", Delay(1.0))
    t0 = time.monotonic()
    assert client.containers.get(container.id).status == "created"
    assert time.monotonic() - t0 >= 1.0


def test_a_held_container_start_reaches_dockerd_only_when_released(proxy, client, container):
    rule = proxy.add("POST", r"^/containers/[^/]+/start$", Hang(), times=1)
    result: list[object] = []
    starter = threading.Thread(target=lambda: result.append(client.api.start(container.id)))
    starter.start()
    rule.wait_hit(timeout=10)
    # Held requests don't block the proxy: other calls go through meanwhile.
    time.sleep(0.5)
    assert client.containers.get(container.id).status == "created"
    assert starter.is_alive()

    assert rule.release() == 1
    starter.join(timeout=10)
    assert result == [None], "docker-py's start() returns None on 204"
    container.reload()
    assert container.status == "running"


def test_stop_releases_held_requests_and_removes_the_socket(docker_client, container):
    proxy = DockerFaultProxy().start()
    rule = proxy.add("POST", r"/start$", Hang())
    client = docker.DockerClient(base_url=proxy.docker_host, version="auto", timeout=15)
    starter = threading.Thread(target=client.api.start, args=(container.id,))
    starter.start()
    rule.wait_hit(timeout=10)
    proxy.stop()
    starter.join(timeout=10)
    assert not starter.is_alive()
    assert not os.path.exists(proxy.socket_path)
    container.reload()
    assert container.status == "running"
