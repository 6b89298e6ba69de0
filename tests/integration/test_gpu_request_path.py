"""Docker's real GPU request path on a host without GPUs, through the stand-in
nvidia-container-runtime-hook (tests/hardware/). The container arguments come
from gpuhub's own builder; Docker, runc and the hook are real."""

import json
import os
import time
import uuid

import docker
import pytest

from harness.hub import TEST_HUB_ID
from spawner import container

HOOK_LOG = os.environ.get("GPUHUB_HOOK_LOG", "/var/log/gpuhub-hook.jsonl")


def hook_records(container_id: str) -> list[dict]:
    try:
        with open(HOOK_LOG) as f:
            return [r for r in map(json.loads, f) if r["id"] == container_id]
    except FileNotFoundError:
        return []


def start_with_devices(client, image, network, devices):
    plan = container.ContainerPlan(
        hub_id=TEST_HUB_ID,
        username="gpu-path",
        server_name="",
        home_volume="gpuhubtest-gpu-path-home",
        devices=devices,
    )
    binds = container.binds(plan)
    kwargs = {
        "image": image,
        "name": f"gpuhubtest-gpu-{uuid.uuid4().hex[:8]}",
        "command": ["sleep", "300"],
        "environment": container.environment({"CUDA_VISIBLE_DEVICES": "0"}, devices),
        "volumes": sorted(b["bind"] for b in binds.values()),
        **container.create_kwargs(plan),
    }
    config = {"binds": binds, "network_mode": network, **container.host_config(plan)}
    kwargs["host_config"] = client.api.create_host_config(**config)
    created = client.api.create_container(**kwargs)
    try:
        client.api.start(created["Id"])
    except docker.errors.APIError as e:
        client.api.remove_container(created["Id"], force=True)
        if "could not select device driver" in str(e) and not os.environ.get("CI"):
            pytest.skip("this dockerd has no nvidia driver: start it with .ci/start-dockerd (stand-in hook on PATH)")
        raise
    return client.containers.get(created["Id"])


def test_granted_devices_reach_the_container_through_dockers_nvidia_request(docker_client, test_image, test_network):
    devices = ("GPU-3f1a2b4c-0000-1111-2222-333344445555", "MIG-9d8e7f6a-aaaa-bbbb-cccc-ddddeeeeffff")
    c = start_with_devices(docker_client, test_image, test_network, devices)
    try:
        c.reload()
        request = c.attrs["HostConfig"]["DeviceRequests"]
        assert request == [
            {
                "Driver": "nvidia",
                "Count": 0,
                "DeviceIDs": list(devices),
                "Capabilities": [["gpu"]],
                "Options": {},
            }
        ]
        code, out = c.exec_run(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES; echo ${CUDA_VISIBLE_DEVICES:-unset}"])
        assert out.decode().split() == [",".join(devices), "unset"]
        deadline = time.monotonic() + 5
        while not hook_records(c.id) and time.monotonic() < deadline:
            time.sleep(0.1)
        records = hook_records(c.id)
        assert records, f"the stand-in hook recorded no start of {c.id[:12]} in {HOOK_LOG}"
        assert records[-1]["visible_devices"] == ",".join(devices)
    finally:
        c.remove(force=True)
        docker_client.volumes.get("gpuhubtest-gpu-path-home").remove(force=True)


def test_a_container_without_a_grant_is_not_seen_by_the_nvidia_hook(docker_client, test_image, test_network):
    c = start_with_devices(docker_client, test_image, test_network, ())
    try:
        assert c.attrs["HostConfig"]["DeviceRequests"] in (None, [])
        code, out = c.exec_run(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"])
        assert out.decode().strip() == "void"
        time.sleep(0.5)
        assert hook_records(c.id) == []
    finally:
        c.remove(force=True)
        docker_client.volumes.get("gpuhubtest-gpu-path-home").remove(force=True)
