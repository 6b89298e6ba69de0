"""gpuhub on a real 3-node Docker Swarm (harness/swarm.py), deployed as labs do (scripts/swarm-up.sh).

Each node is its own dockerd in its own network namespace, advertising 2 stand-in GPUs; the
stand-in nvidia runtime records which container on which node was told which UUID. Verdicts
come from the engines: tasks and node ids from the manager, containers and their environment
from each node's own dockerd, never from gpuhub's ledger alone.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import time

import pytest
import requests

from harness.swarm import wait_for
from harness.swarm_stack import HUB_SERVICE, SwarmDeployment, unique_users
from spawner import container, swarm

IMAGE = os.environ.get("GPUHUB_TEST_IMAGE", "gpuhub/notebook:cpu")

pytestmark = [pytest.mark.swarm, pytest.mark.docker, pytest.mark.swarm_images(IMAGE)]


@pytest.fixture(scope="module")
def hub(swarm_cluster, tmp_path_factory):
    deployment = SwarmDeployment(swarm_cluster, tmp_path_factory.mktemp("swarm-deploy"), IMAGE)
    took = deployment.build_and_load_images()
    print(f"swarm deployment images: {took}")
    deployment.up()
    yield deployment
    deployment.down()


@pytest.fixture
def users(hub):
    made: list[str] = []

    def make(count: int, tag: str = "") -> list[str]:
        names = unique_users(count, tag)
        made.extend(names)
        return names

    yield make
    for user in made:
        hub.api("DELETE", f"/users/{user}/server")
    wait_for(lambda: not hub.services(), 120, "every notebook service removed", interval=1)
    for node in hub.cluster.nodes:  # only the manager may change a node
        hub.cluster.manager.docker("node", "update", "--availability", "active", node.node_id, check=False)


def _placement(hub, user: str) -> tuple[str, tuple[str, ...], str]:
    """(node id of the running task, devices in its spec's environment, service id) of a user's server."""
    (service,) = [s for s in hub.services() if s["Spec"]["Labels"].get(container.LABEL_USER) == user]
    task = hub.cluster.running_task(service["ID"])
    env = service["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or []
    return task["NodeID"], swarm.env_devices(env), service["ID"]


def _assert_engine_matches_ledger(hub) -> dict[str, tuple[str, str, str]]:
    engine = hub.engine_holders()  # asserts no UUID in two running containers cluster-wide
    ledger = hub.ledger()
    where = hub.node_of_device()
    for uuid, (owner, node, _cid) in engine.items():
        assert ledger.get(uuid) == owner, f"{uuid} runs for {owner} on {node}, the hub says {ledger.get(uuid)}"
        assert where[uuid].name == node, f"{uuid} belongs to {where[uuid].name} but runs on {node}"
    return engine


def test_placement_equals_the_ledger_and_the_hub_reaches_servers_on_other_nodes(hub, users):
    names = users(4, "p")
    for name in names[:3]:
        r = hub.start_server(name, "gpu")
        assert r.status_code in (201, 202), r.text
    assert hub.start_server(names[3], "cpu").status_code in (201, 202)
    for name in names:
        hub.wait_ready(name)

    ledger = hub.ledger()
    by_id = {n.node_id: n for n in hub.cluster.nodes}
    nodes_used = set()
    for name in names[:3]:
        node_id, visible, service_id = _placement(hub, name)
        held = sorted(u for u, owner in ledger.items() if owner == f"{name}/")
        assert list(visible) == held and len(held) == 1, (name, visible, held)
        assert held[0] in by_id[node_id].gpus, f"{held[0]} granted to {name} but its task runs on {by_id[node_id]}"
        service = hub.cluster.manager.client().inspect_service(service_id)
        assert service["Spec"]["Labels"][swarm.LABEL_NODE] == node_id
        assert f"node.id=={node_id}" in service["Spec"]["TaskTemplate"]["Placement"]["Constraints"]
        assert service["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
        nodes_used.add(by_id[node_id].name)
    # The stand-in nvidia runtime saw each GPU container's UUID on the node the ledger chose.
    seen = {(r["node"], r.get("visible")) for r in hub.cluster.runtime_log()}
    for name in names[:3]:
        node_id, visible, _ = _placement(hub, name)
        assert (by_id[node_id].name, ",".join(visible)) in seen
    # The CPU server sees no GPU even though the nodes' default runtime is nvidia.
    _, cpu_visible, cpu_service = _placement(hub, names[3])
    env = hub.cluster.manager.client().inspect_service(cpu_service)["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in env and cpu_visible == ()
    _assert_engine_matches_ledger(hub)

    # Servers on workers answer through the hub's proxy: the hub reached them over the overlay.
    workers = {n.node_id for n in hub.cluster.workers}
    remote = [n for n in names if _placement(hub, n)[0] in workers]
    assert remote, f"every server landed on the manager: {nodes_used}"
    for name in remote:
        token = hub.api("POST", f"/users/{name}/tokens", json={"expires_in": 600}).json()["token"]
        r = hub.api("GET", "", headers={})  # the hub itself
        assert r.ok
        api = requests.get(f"{hub.url}/user/{name}/api/status", headers={"Authorization": f"token {token}"}, timeout=30)
        assert api.status_code == 200, (name, api.status_code, api.text[:200])

    # Hardening on Swarm: non-root, no capabilities, no-new-privileges (the nodes' daemon setting).
    node_id, _, _ = _placement(hub, names[0])
    node = by_id[node_id]
    (c,) = node.client().containers(filters={"label": f"{container.LABEL_USER}={names[0]}"})
    status = node.docker("exec", c["Id"], "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] != "0"
    assert int(fields["CapEff"].strip(), 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    info = node.client().inspect_container(c["Id"])
    assert info["HostConfig"]["PidsLimit"] == int(hub.setting("GPUHUB_PIDS_LIMIT"))
    assert not any("docker.sock" in (m.get("Source") or "") for m in info["Mounts"])


def test_no_uuid_is_held_twice_cluster_wide_in_a_storm(hub, users):
    """3 users per device (6 devices on 3 nodes): at every look, one container per UUID, and the
    queue hands each freed device on."""
    names = users(18, "s")
    with concurrent.futures.ThreadPoolExecutor(18) as pool:
        codes = list(pool.map(lambda n: hub.start_server(n, "gpu").status_code, names))
    assert all(c in (201, 202) for c in codes), codes
    served: set[str] = set()
    deadline = time.monotonic() + 900
    while len(served) < len(names):
        assert time.monotonic() < deadline, f"only {len(served)} of {len(names)} were served"
        engine = _assert_engine_matches_ledger(hub)
        running = {owner.split("/")[0] for owner, _node, _cid in engine.values()}
        ready = [n for n in running if (hub.server(n) or {}).get("ready")]
        for name in ready:
            served.add(name)
            hub.stop_server(name)  # hands its device to the next in the queue
        time.sleep(1)
    assert len(hub.cluster.runtime_log()) >= len(names)


def test_the_ledger_rebuilt_after_a_hub_sigkill_equals_the_old_one(hub, users):
    names = users(4, "k")
    for name in names:
        hub.start_server(name, "gpu")
    for name in names:
        hub.wait_ready(name)
    before = hub.ledger()
    assert len(before) == 4
    old = hub.hub_container()
    hub.cluster.manager.docker("kill", "--signal", "KILL", old)
    # Swarm starts a new hub task by itself (restart_policy any): no watchdog on Swarm.
    wait_for(lambda: hub.hub_task() and hub.hub_container() != old, 120, "a new hub task", interval=1)
    hub.wait_healthy(120)
    assert hub.ledger() == before
    _assert_engine_matches_ledger(hub)
    for name in names:
        assert (hub.server(name) or {}).get("ready"), name


def test_a_lost_node_makes_its_leases_stale_and_its_return_reconciles_them(hub, users):
    names = users(2, "n")
    victim = hub.cluster.node("node3")
    others = [n for n in hub.cluster.nodes if n is not victim]
    # Only node3 takes servers for the first start: its lease is what goes stale.
    for n in others:
        hub.cluster.manager.docker("node", "update", "--availability", "pause", n.node_id)
    wait_for(lambda: all(d["quarantine"] for u, d in hub.gpu_map().items() if u not in victim.gpus), 30, "paused")
    hub.start_server(names[0], "gpu")
    hub.wait_ready(names[0])
    for n in others:
        hub.cluster.manager.docker("node", "update", "--availability", "active", n.node_id)
    held = [u for u, owner in hub.ledger().items() if owner == f"{names[0]}/"]
    assert held and held[0] in victim.gpus

    victim.kill_dockerd()
    hub.cluster.wait_state("down", 90, [victim.name])
    rows = wait_for(
        lambda: (m := hub.gpu_map()) and all(m[u]["quarantine"] for u in victim.gpus) and m, 60, "node3 quarantined"
    )
    assert all(any("node3" in r and "down" in r for r in rows[u]["quarantine"]) for u in victim.gpus)
    assert hub.ledger().get(held[0]) == f"{names[0]}/", "the stale lease must be kept, not reissued"
    # A new GPU start is served on another node, never with node3's devices.
    hub.start_server(names[1], "gpu")
    hub.wait_ready(names[1])
    got = [u for u, owner in hub.ledger().items() if owner == f"{names[1]}/"]
    assert got and got[0] not in victim.gpus

    victim.start_dockerd()
    hub.cluster.wait_state("ready", 90, [victim.name])
    # Reconciled: node3's devices are handed out again once it has been back a while, and what the
    # ledger says about them is what node3's engine runs.
    wait_for(lambda: not any(hub.gpu_map()[u]["quarantine"] for u in victim.gpus), 90, "node3 lifted")
    wait_for(lambda: _settled(hub, victim), 120, "node3's servers and the ledger agree")


def _settled(hub, node) -> bool:
    engine = _assert_engine_matches_ledger(hub)
    ledger = hub.ledger()
    return all((u in engine) == (u in ledger) for u in node.gpus)


def test_requesting_generic_resources_on_engine_20_is_refused_with_one_line(hub, tmp_path):
    env = tmp_path / "generic.env"
    env.write_text(hub.env_file.read_text() + "GPUHUB_SWARM_REQUEST_GENERIC_RESOURCES=true\n")
    proc = hub.swarm_up(env)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
    assert len(lines) == 1 and "Engine >= 23" in lines[0] and "20.10" in lines[0], proc.stderr
    # The hub itself refuses the same configuration at start, in one line, before serving anyone.
    m = hub.cluster.manager
    run = m.docker(
        "run",
        "--rm",
        "--env-file",
        str(env),
        "-e",
        "GPUHUB_BACKEND=swarm",
        "-e",
        "GPUHUB_DATA_DIR=/tmp/gpuhub",
        "-v",
        f"{m.sock}:/var/run/docker.sock",
        "-v",
        f"{hub.config_dir}:/srv/gpuhub/config:ro",
        "gpuhub/hub:latest",
        check=False,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    errors = [ln for ln in run.stderr.splitlines() if "configuration error" in ln]
    assert len(errors) == 1 and "Engine >= 23" in errors[0], run.stderr
    # Nothing changed: the running hub is the same task.
    assert hub.hub_task() is not None and HUB_SERVICE


def _running_task(hub, service_id: str) -> dict | None:
    for t in hub.cluster.tasks(service_id):
        if t["Status"]["State"] == "running" and t["DesiredState"] == "running":
            return t
    return None


def _snapshot(hub, names) -> dict[str, tuple[str, str, tuple[str, ...], str]]:
    """user -> (service id, running task id, devices in its spec, node id)."""
    out = {}
    for name in names:
        node_id, visible, service_id = _placement(hub, name)
        out[name] = (service_id, _running_task(hub, service_id)["ID"], visible, node_id)
    return out


def _on_each_node(hub, names, profile: str) -> None:
    """Start one server per name, name i on node i+1 (the other nodes paused meanwhile)."""
    for name, target in zip(names, hub.cluster.nodes, strict=True):
        hub.only_on([target])
        r = hub.start_server(name, profile)
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(name)
        assert _placement(hub, name)[0] == target.node_id, f"{name} should run on {target.name}"
    hub.only_on(hub.cluster.nodes)


def test_a_home_written_on_node2_is_there_when_the_server_moves_to_node3(hub, users):
    """shared-path homes: one folder per user under a root every node mounts at the same path."""
    (name,) = users(1, "h")
    node2, node3 = hub.cluster.node("node2"), hub.cluster.node("node3")
    content = f"written on node2 {secrets.token_hex(8)}\n"
    hub.only_on([node2])
    assert hub.start_server(name, "gpu").status_code in (201, 202)
    hub.wait_ready(name)
    assert _placement(hub, name)[0] == node2.node_id
    token = hub.api("POST", f"/users/{name}/tokens", json={"expires_in": 900}).json()["token"]
    contents = f"{hub.url}/user/{name}/api/contents/moved.txt"
    auth = {"Authorization": f"token {token}"}
    r = requests.put(contents, json={"type": "file", "format": "text", "content": content}, headers=auth, timeout=30)
    assert r.status_code in (200, 201), r.text[:300]
    hub.stop_server(name)

    hub.only_on([node3])
    assert hub.start_server(name, "gpu").status_code in (201, 202)
    hub.wait_ready(name)
    node_id, visible, _ = _placement(hub, name)
    assert node_id == node3.node_id and visible and visible[0] in node3.gpus
    r = requests.get(contents, params={"content": "1"}, headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["content"] == content, r.text[:300]
    # The file is in the user's folder under the shared root, owned by the notebook user.
    on_disk = hub.home_root / container.volume_safe(name) / "moved.txt"
    assert on_disk.read_text() == content and on_disk.stat().st_uid == 1000


def test_gpu_servers_keep_their_task_and_device_through_node_updates_new_networks_and_a_worker_dockerd_restart(
    hub, users
):
    """moby/moby#44378: on Engine 20.10 a node or network update made Swarm kill and reschedule
    GPU tasks that *requested* generic resources. gpuhub's services request none, so nothing moves;
    a worker's dockerd restart ends its containers (Swarm refuses live-restore), and Swarm restarts
    them on the same node with the same device while the hub keeps the lease."""
    names = users(3, "r")
    _on_each_node(hub, names, "gpu")
    before = _snapshot(hub, names)
    ledger = hub.ledger()
    m = hub.cluster.manager

    for n in hub.cluster.nodes:
        m.docker("node", "update", "--label-add", "gpuhub.test-rack=r1", n.node_id)
    net = f"gpuhub-test-extra-{secrets.token_hex(2)}"
    m.docker("network", "create", "--driver", "overlay", "--attachable", net)
    try:
        time.sleep(15)  # several reconcile passes and the orchestrator's reaction time
        assert _snapshot(hub, names) == before, "a node label update or a new network moved a GPU task"
        assert hub.ledger() == ledger
        _assert_engine_matches_ledger(hub)
    finally:
        m.docker("network", "rm", net, check=False)
        for n in hub.cluster.nodes:
            m.docker("node", "update", "--label-rm", "gpuhub.test-rack", n.node_id, check=False)

    worker = hub.cluster.node("node2")
    (on_worker,) = [u for u, s in before.items() if s[3] == worker.node_id]
    worker.restart_dockerd()
    hub.cluster.wait_ready(60, [worker.name])

    def back():
        task = _running_task(hub, before[on_worker][0])
        return task if task and task["ID"] != before[on_worker][1] else None

    task = wait_for(back, 180, f"Swarm restarting {on_worker}'s task on {worker.name}", interval=1)
    assert task["NodeID"] == worker.node_id
    assert swarm.env_devices(task["Spec"]["ContainerSpec"]["Env"]) == before[on_worker][2]
    hub.wait_ready(on_worker)
    for _ in range(10):  # the hub keeps the server and its lease while Swarm restarts it, and after
        assert hub.ledger() == ledger
        _assert_engine_matches_ledger(hub)
        assert (hub.server(on_worker) or {}).get("ready"), f"the hub dropped {on_worker}'s server"
        time.sleep(1)
    unchanged = {u: s for u, s in _snapshot(hub, names).items() if u != on_worker}
    assert unchanged == {u: s for u, s in before.items() if u != on_worker}
