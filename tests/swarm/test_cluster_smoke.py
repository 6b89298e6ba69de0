"""The simulated Swarm does what gpuhub's Swarm design relies on (docs: the research, §1.3/§4):
nodes join and report Ready, a service pinned by node.id runs there with the GPU UUID it was
given (judged by the stand-in NVIDIA runtime, as the real one would read it), the overlay
carries traffic between nodes by service name, host-mode ports are reachable from the host, and
a node whose dockerd dies shows Down, then Ready again once it is back.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from harness.swarm import NODE_NAME_LABEL, wait_for

pytestmark = pytest.mark.swarm

PORT = 8000
SERVE = f'echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p {PORT} -h /www'


def fetch_over_overlay(swarm, image: str, service: str, timeout: float = 60) -> str:
    """What a container on node1, attached to the overlay, gets from http://<service>:PORT/.
    Retried: a new task's name reaches the other nodes' DNS by gossip, a moment later. (Debian
    busybox-static 1.35's `wget -T` crashes, hence `timeout`.)"""

    def get() -> str:
        proc = swarm.manager.docker(
            "run", "--rm", "--network", swarm.network, image, "timeout", "10", "wget", "-q", "-O", "-",
            f"http://{service}:{PORT}/", check=False,
        )  # fmt: skip
        return proc.stdout if proc.returncode == 0 else ""

    return wait_for(get, timeout, f"{service} over the overlay from node1", interval=1)


@pytest.fixture(scope="module")
def pinned(swarm, busybox):
    """A dnsrr service pinned to node2 and given node2's second GPU, as gpuhub's ledger would."""
    node2 = swarm.node("node2")
    uuid = node2.gpus[1]
    swarm.service("smoke-pinned", busybox, "sh", "-c", SERVE, node=node2, env={"NVIDIA_VISIBLE_DEVICES": uuid})
    try:
        yield swarm.running_task("smoke-pinned"), uuid
    finally:
        swarm.remove_service("smoke-pinned")


def test_three_nodes_ready_with_labels_and_gpus(swarm):
    assert swarm.node_states() == {"node1": "ready", "node2": "ready", "node3": "ready"}
    for node in swarm.nodes:
        info = swarm.manager.client().inspect_node(node.node_id)
        assert info["Spec"]["Labels"][NODE_NAME_LABEL] == node.name
        assert info["Spec"]["Role"] == ("manager" if node is swarm.manager else "worker")
        advertised = [r["NamedResourceSpec"]["Value"] for r in info["Description"]["Resources"]["GenericResources"]]
        assert sorted(advertised) == sorted(node.gpus)


def test_pinned_service_runs_on_its_node_with_its_uuid(swarm, pinned):
    task, uuid = pinned
    assert swarm.node_of(task["NodeID"]).name == "node2"
    container = task["Status"]["ContainerStatus"]["ContainerID"]
    created = [r for r in swarm.runtime_log() if r["id"] == container]
    assert [(r["node"], r["visible"]) for r in created] == [("node2", uuid)]


def test_overlay_reaches_the_task_by_service_name(swarm, busybox, pinned):
    task, _ = pinned
    reply = fetch_over_overlay(swarm, busybox, "smoke-pinned")
    assert reply.strip() == f"hello from {task['Status']['ContainerStatus']['ContainerID'][:12]}"


def test_host_mode_port_on_node1_is_reachable_from_the_host(swarm, busybox):
    node1 = swarm.node("node1")
    swarm.service("smoke-published", busybox, "sh", "-c", SERVE, node=node1, host_port=(18000, PORT))
    try:
        swarm.running_task("smoke-published")
        url = f"http://{node1.ip}:18000/"
        reply = wait_for(lambda: urllib.request.urlopen(url, timeout=3).read().decode(), 30, url)
        assert reply.startswith("hello from ")
    finally:
        swarm.remove_service("smoke-published")


def test_killed_node_goes_down_and_comes_back(swarm, busybox):
    node3 = swarm.node("node3")
    node3.kill_dockerd()
    killed = time.monotonic()
    swarm.wait_state("down", 60, ["node3"])
    swarm.timings["node3 Down after dockerd SIGKILL"] = time.monotonic() - killed
    started = time.monotonic()
    node3.start_dockerd()
    swarm.wait_ready(60)
    swarm.timings["node3 Ready after dockerd start (incl. its start-up)"] = time.monotonic() - started

    swarm.service("smoke-node3", busybox, "sh", "-c", SERVE, node=node3)
    try:
        task = swarm.running_task("smoke-node3")
        assert swarm.node_of(task["NodeID"]) is node3
        assert fetch_over_overlay(swarm, busybox, "smoke-node3").startswith("hello from ")
    finally:
        swarm.remove_service("smoke-node3")
