import os
import secrets
import shutil

import docker
import pytest

from harness.hub import TEST_HUB_ID, Hub, ensure_network
from spawner.container import LABEL_HUB

from .browser import browser_page, chromium  # noqa: F401 - fixtures
from .denials import DENIED

USER_PREFIX = "gpuhubt-"  # test users; their home volumes are removed after the tests


def pytest_terminal_summary(terminalreporter):
    if DENIED:
        terminalreporter.section(f"cross-user and privilege attempts denied: {len(DENIED)}")
        for line in DENIED:
            terminalreporter.write_line(f"  denied: {line}")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def docker_client():
    client = docker.from_env(version="auto")
    try:
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(f"no Docker Engine answers ({e}); start one (.ci/start-dockerd) or deselect with -m 'not docker'")
    return client


@pytest.fixture(scope="session")
def test_image(docker_client):
    image = os.environ.get("GPUHUB_TEST_IMAGE", "gpuhub/notebook:cpu")
    try:
        docker_client.images.get(image)
    except docker.errors.ImageNotFound:
        pytest.fail(f"test image {image} is missing; `make test-images` builds it")
    return image


@pytest.fixture(scope="session")
def test_network(docker_client):
    return ensure_network(docker_client)


def remove_test_containers(client):
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_HUB}={TEST_HUB_ID}"}):
        c.remove(force=True)


def remove_test_volumes(client):
    for v in client.volumes.list():
        if v.name.startswith("jupyterhub-user-" + USER_PREFIX):
            try:
                v.remove(force=True)
            except docker.errors.APIError:
                pass


@pytest.fixture(scope="module", autouse=True)
def clean_docker(docker_client):
    remove_test_containers(docker_client)
    yield
    remove_test_containers(docker_client)
    remove_test_volumes(docker_client)


@pytest.fixture
def username():
    return USER_PREFIX + secrets.token_hex(3)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_image, test_network, chp_on_path):
    """A running hub shared by the tests of one module."""
    h = Hub(tmp_path_factory.mktemp("hub"), test_image).start()
    yield h
    h.stop()


@pytest.fixture
def make_hub(tmp_path_factory, test_image, test_network, chp_on_path):
    """Factory for hubs with their own settings; stopped after the test."""
    hubs = []

    def make(**kwargs) -> Hub:
        h = Hub(tmp_path_factory.mktemp("hub"), kwargs.pop("image", test_image), **kwargs)
        hubs.append(h)
        return h

    yield make
    for h in hubs:
        h.stop()


@pytest.fixture(autouse=True)
def dump_logs_on_failure(request, docker_client):
    Hub.instances[:] = [h for h in Hub.instances if h.proc is not None and h.proc.poll() is None]
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for h in Hub.instances:
        if h.proc is not None:
            print(f"--- hub log ({h.workdir}) ---\n{h.log_tail(80)}")
    for c in docker_client.containers.list(all=True, filters={"label": f"{LABEL_HUB}={TEST_HUB_ID}"}):
        print(f"--- container {c.name} ---\n{c.logs(tail=30).decode(errors='replace')}")


@pytest.fixture(scope="session")
def chp_on_path():
    if not shutil.which("configurable-http-proxy"):
        pytest.fail("configurable-http-proxy is not on PATH; `make test` installs it under .tools/")
