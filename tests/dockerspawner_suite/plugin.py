"""pytest plugin: dockerspawner's own test suite, run against GPUDockerSpawner bound as DockerSpawner.

tests/integration/test_dockerspawner_suite.py runs the tests shipped in the pinned
dockerspawner's source distribution in a pytest subprocess with `-p` this module. It
provides what dockerspawner's repository conftest (not in the sdist) provides: a
JupyterHub MockHub (JupyterHub's own test fixtures), the `dockerspawner_configured_app`
fixture and the clean-up, and binds `dockerspawner.DockerSpawner` to GPUDockerSpawner,
so every `DockerSpawner(...)` and `isinstance(..., DockerSpawner)` in the suite meets ours.

Stand-ins, at the registry boundary only: this host has no registry, so the images the
suite names (quay.io/jupyterhub/singleuser:*, busybox) are local tags of the test
notebook image, made here and removed afterwards.
"""

from __future__ import annotations

import os
import sys
from unittest import mock

import docker as docker_py
import dockerspawner
import pytest
from jupyterhub.tests.mocking import MockHub
from jupyterhub.user import User

from spawner import GPUDockerSpawner
from spawner.container import LABEL_HUB
from tests.dockerspawner_suite.deviations import DEVIATIONS, NEEDS_REGISTRY

#: GPUHUB_DSSUITE_SPAWNER=stock runs the suite against DockerSpawner itself: the baseline that
#: tells the suite's own incompatibilities with this JupyterHub from gpuhub's.
STOCK = os.environ.get("GPUHUB_DSSUITE_SPAWNER") == "stock"
SPAWNER = dockerspawner.DockerSpawner if STOCK else GPUDockerSpawner
dockerspawner.DockerSpawner = SPAWNER
pytest_plugins = ["jupyterhub.tests.conftest"]

PREFIX = "dockerspawner-test"
HUB_ID = "dockerspawner-suite"
HOME_VOLUME = "gpuhub-dssuite-{username}"
STAND_IN_TAGS = (
    f"quay.io/jupyterhub/singleuser:{dockerspawner.dockerspawner._jupyterhub_xy}",
    "quay.io/jupyterhub/singleuser:4.0",
    "quay.io/jupyterhub/singleuser:4",
    "busybox:1.29.1",
)

# The suite (dockerspawner 14.0.0) predates JupyterHub 6, which stopped creating a named server's
# database row on first access (`user.spawners[name]`); the suite relies on that. Restored here,
# for stock and gpuhub runs alike, so the suite tests the spawner rather than that change.
_new_spawner = User._new_spawner


def _new_spawner_creating_its_row(self, server_name, *args, **kwargs):
    if server_name not in self.orm_spawners:
        self._new_orm_spawner(server_name, server_name)
    return _new_spawner(self, server_name, *args, **kwargs)


User._new_spawner = _new_spawner_creating_its_row

# The hub listens where the containers (default bridge network) can reach it.
MockHub.hub_ip = "0.0.0.0"


def _bridge_gateway(client) -> str:
    config = client.networks.get("bridge").attrs["IPAM"]["Config"]
    return next(c["Gateway"] for c in config if "Gateway" in c and ":" not in c["Gateway"])


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.name in DEVIATIONS and not STOCK:
            item.add_marker(pytest.mark.xfail(strict=True, raises=AssertionError, reason=DEVIATIONS[item.name]))
        base = item.name.split("[", 1)[0]
        if base in NEEDS_REGISTRY:
            item.add_marker(pytest.mark.skip(reason=NEEDS_REGISTRY[base]))


@pytest.fixture(autouse=True, scope="session")
def docker():
    """Stand-in registry images, and removal of every container and volume the suite made."""
    client = docker_py.from_env()
    image = client.images.get(os.environ["GPUHUB_TEST_IMAGE"])
    made = []
    for tag in STAND_IN_TAGS:
        try:
            client.images.get(tag)
        except docker_py.errors.ImageNotFound:
            repo, _, version = tag.rpartition(":")
            image.tag(repo, version)
            made.append(tag)
    MockHub.hub_connect_ip = _bridge_gateway(client)
    try:
        yield client
    finally:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_HUB}={HUB_ID}"}):
            c.remove(force=True)
        for c in client.containers.list(all=True):
            if c.name.startswith(PREFIX):
                c.remove(force=True)
        for v in client.volumes.list():
            if v.name.startswith("gpuhub-dssuite-"):
                v.remove(force=True)
        for tag in made:
            client.images.remove(tag, noprune=True)


@pytest.fixture
async def dockerspawner_configured_app(app, named_servers):
    """JupyterHub's MockHub spawning with GPUDockerSpawner (as dockerspawner's conftest does with DockerSpawner)."""
    app.config.DockerSpawner.prefix = PREFIX
    app.config.GPUDockerSpawner.hub_id = HUB_ID
    app.config.GPUDockerSpawner.home_volume = HOME_VOLUME
    # A start waits for the server to answer HTTP; the post_start test's server never does.
    app.config.Spawner.start_timeout = 20
    with mock.patch.dict(app.tornado_settings, {"spawner_class": SPAWNER}):
        yield app


def pytest_report_header(config):
    return f"dockerspawner {dockerspawner.__version__} suite, DockerSpawner bound to {SPAWNER!r} ({sys.executable})"
