"""Shared by the tests of the compose deployment (`make up`)."""

from __future__ import annotations

import os

import docker
import pytest

from harness.compose import Deployment, EngineBusy, unique_users


def require_nvidia_device_requests(client, image: str, device: str) -> None:
    """Skip where dockerd has no nvidia driver (no stand-in hook), except in CI, where that is a failure."""
    probe = client.containers.create(
        image,
        ["true"],
        name=unique_users(1, "probe")[0],
        network_mode="none",
        device_requests=[docker.types.DeviceRequest(driver="nvidia", device_ids=[device], capabilities=[["gpu"]])],
    )
    try:
        probe.start()
    except docker.errors.APIError as e:
        if "could not select device driver" in str(e) and not os.environ.get("CI"):
            pytest.skip("this dockerd has no nvidia driver: start it with .ci/start-dockerd (stand-in hook on PATH)")
        raise
    finally:
        probe.remove(force=True)


def up_or_skip(d: Deployment, make_args: tuple[str, ...] = ()) -> Deployment:
    """`make up` for a module's deployment; next to a developer's own deployment, skip (in CI: fail)."""
    try:
        return d.up(make_args=make_args)
    except EngineBusy as e:
        d.down()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{e}; these tests run their own deployment under the same names")
    except BaseException:
        print(f"--- make up ---\n{d.log_tail()}\n--- hub ---\n{d.hub_log()}")
        d.down()
        raise


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
