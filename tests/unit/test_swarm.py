"""The Swarm backend without Docker: the pure part (spawner/swarm.py), the node-aware ledger, and the
GPU service with nodes that go down and come back.

The GPU service runs on the in-memory engine stand-in, extended with `nodes()` (what a Swarm manager
says about its nodes) and with the node each container runs on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from spawner import container, swarm
from spawner.allocator import AllocationError, Ledger
from spawner.devices import Device, Request
from spawner.engine import ContainerView
from spawner.gpu_service import NODE, GPUService, LiftRefused, ServiceConfig
from spawner.inventory import Inventory
from spawner.operations import Operations

from .engine_standin import EngineStandIn
from .test_gpu_service import Clock, admit_for, holders, settle, start_server


# --- Engine API fixtures ------------------------------------------------------------------------------
def node_json(
    node_id="n1",
    hostname="gpu-a",
    state="ready",
    availability="active",
    version="24.0.7",
    labels=None,
    resources=(),
    discrete=(("SSD", 3),),
):
    """A node object as GET /nodes returns it (trimmed to what matters, plus some noise)."""
    generic = [{"DiscreteResourceSpec": {"Kind": kind, "Value": value}} for kind, value in discrete]
    generic += [{"NamedResourceSpec": {"Kind": kind, "Value": value}} for kind, value in resources]
    return {
        "ID": node_id,
        "Version": {"Index": 373531},
        "CreatedAt": "2026-11-20T09:00:00.000000001Z",
        "UpdatedAt": "2026-11-26T10:00:00.5Z",
        "Spec": {"Availability": availability, "Name": "", "Role": "worker", "Labels": labels or {}},
        "Description": {
            "Hostname": hostname,
            "Platform": {"Architecture": "x86_64", "OS": "linux"},
            "Resources": {"NanoCPUs": 64000000000, "MemoryBytes": 540000000000, "GenericResources": generic},
            "Engine": {"EngineVersion": version, "Labels": {}, "Plugins": []},
        },
        "Status": {"State": state, "Message": "", "Addr": "10.0.0.7"},
    }


GPU_A0 = "GPU-a0000000-1111-2222-3333-444444444444"
GPU_A1 = "GPU-a1000000-1111-2222-3333-444444444444"
MIG_A0 = "MIG-a0000000-5555-6666-7777-888888888888"
MIG_A1 = "MIG-a1000000-5555-6666-7777-888888888888"


def task_json(
    task_id, node="n1", state="running", desired="running", updated="2026-11-26T10:00:00.1Z", exit_code=None, err=""
):
    status = {"Timestamp": updated, "State": state, "Message": state}
    if err:
        status["Err"] = err
    if exit_code is not None:
        status["ContainerStatus"] = {"ContainerID": "c" * 64, "PID": 0, "ExitCode": exit_code}
    return {
        "ID": task_id,
        "ServiceID": "s1",
        "NodeID": node,
        "UpdatedAt": updated,
        "DesiredState": desired,
        "Spec": {"ContainerSpec": {"Image": "img", "Env": ["A=1", f"NVIDIA_VISIBLE_DEVICES={GPU_A0}"]}},
        "Status": status,
    }


def task(task_id, **kwargs):
    return swarm.task_view(task_json(task_id, **kwargs))


# --- node_view ----------------------------------------------------------------------------------------
def test_node_view_reads_an_engine_api_node_and_keeps_only_named_generic_resources():
    info = node_json(
        hostname="gpu-a",
        version="20.10.24+dfsg1",
        labels={swarm.LABEL_GPU_MODEL: "A100"},
        resources=(("NVIDIA-GPU", GPU_A0), ("NVIDIA-GPU", GPU_A1)),
    )
    view = swarm.node_view(info)
    assert view == swarm.NodeView(
        id="n1",
        hostname="gpu-a",
        state="ready",
        availability="active",
        role="worker",
        engine_version="20.10.24+dfsg1",
        labels={swarm.LABEL_GPU_MODEL: "A100"},
        addr="10.0.0.7",
        resources=(("NVIDIA-GPU", GPU_A0), ("NVIDIA-GPU", GPU_A1)),
    )
    assert view.takes_servers and view.name == "gpu-a"


@pytest.mark.parametrize(
    "state, availability, takes",
    [
        ("ready", "active", True),
        ("down", "active", False),
        ("ready", "drain", False),
        ("ready", "pause", False),
        ("unknown", "active", False),
        ("disconnected", "active", False),
    ],
)
def test_only_a_ready_active_node_takes_servers(state, availability, takes):
    view = swarm.node_view(node_json(state=state.upper(), availability=availability.capitalize()))
    assert (view.state, view.availability) == (state, availability)  # the API's spelling is normalised
    assert view.takes_servers is takes


def test_a_node_object_with_nothing_in_it_is_an_unknown_node_that_takes_no_servers():
    view = swarm.node_view({"ID": "abcdef0123456789xyz"})
    assert (view.state, view.availability, view.resources) == ("unknown", "active", ())
    assert not view.takes_servers
    assert view.name == "abcdef012345"  # no hostname: the short id


# --- devices_of / inventory_of ----------------------------------------------------------------------
def test_a_nodes_gpus_are_its_devices_in_listing_order_with_the_model_from_its_label():
    view = swarm.node_view(
        node_json(
            labels={swarm.LABEL_GPU_MODEL: "H100"},
            resources=(("NVIDIA-GPU", GPU_A1), ("NVIDIA-GPU", GPU_A0)),
        )
    )
    assert swarm.devices_of(view) == [
        Device(GPU_A1, model="H100", index=0, node="n1"),
        Device(GPU_A0, model="H100", index=1, node="n1"),
    ]


def test_a_node_without_a_model_label_has_gpus_of_model_gpu():
    view = swarm.node_view(node_json(resources=(("NVIDIA-GPU", GPU_A0),)))
    assert [d.model for d in swarm.devices_of(view)] == ["GPU"]


def test_mig_kinds_give_slices_of_their_profile_beside_the_whole_gpus():
    view = swarm.node_view(
        node_json(
            resources=(
                ("NVIDIA-GPU", GPU_A0),
                ("NVIDIA-MIG-1G.10GB", MIG_A0),
                ("NVIDIA-MIG-1G.10GB", MIG_A1.upper().replace("MIG-", "mig-")),  # spelled differently
            )
        )
    )
    gpu, first, second = swarm.devices_of(view)
    assert (gpu.is_mig, gpu.index) == (False, 0)
    assert (first.uuid, first.mig_profile, first.index, first.node) == (MIG_A0, "1g.10gb", 0, "n1")
    assert (second.uuid, second.mig_profile, second.index) == (MIG_A1, "1g.10gb", 1)  # canonical UUID


@pytest.mark.parametrize(
    "kind, value",
    [
        ("NVIDIA-GPU", MIG_A0),  # a slice advertised as a whole GPU
        ("NVIDIA-GPU", "0"),  # an index, not a UUID
        ("NVIDIA-MIG-1G.10GB", GPU_A0),  # a whole GPU advertised as a slice
        ("NVIDIA-MIG-BIG", MIG_A0),  # not a MIG profile
    ],
)
def test_a_wrong_uuid_for_its_kind_is_skipped_with_a_note_naming_the_node(kind, value):
    good = swarm.node_view(node_json("n1", "gpu-a", resources=(("NVIDIA-GPU", GPU_A0),)))
    bad = swarm.node_view(node_json("n2", "gpu-b", resources=(("NVIDIA-GPU", GPU_A1), (kind, value))))
    found = swarm.inventory_of([good, bad])
    assert [d.uuid for d in found.devices] == [GPU_A0]  # the misconfigured node serves nothing
    assert found.source == "swarm"
    assert "gpu-b" in found.note and f"{kind}={value}" in found.note and "gpu-a" not in found.note


def test_devices_of_names_the_node_and_the_bad_entry():
    bad = swarm.node_view(node_json("n2", "gpu-b", resources=(("NVIDIA-GPU", "0"),)))
    with pytest.raises(swarm.SwarmConfigError, match=r"node gpu-b: NVIDIA-GPU=0 "):
        swarm.devices_of(bad)


def test_one_uuid_advertised_by_two_nodes_is_refused_naming_both():
    first = swarm.node_view(node_json("n1", "gpu-a", resources=(("NVIDIA-GPU", GPU_A0),)))
    second = swarm.node_view(node_json("n2", "gpu-b", resources=(("NVIDIA-GPU", GPU_A0.lower()),)))
    with pytest.raises(swarm.SwarmConfigError) as e:
        swarm.inventory_of([second, first])
    assert GPU_A0 in str(e.value) and "gpu-a" in str(e.value) and "gpu-b" in str(e.value)


def test_the_cluster_inventory_has_every_nodes_devices_and_discrete_resources_are_ignored():
    nodes = [
        swarm.node_view(node_json("n2", "gpu-b", resources=(("NVIDIA-GPU", GPU_A1),))),
        swarm.node_view(node_json("n1", "gpu-a", resources=(("NVIDIA-GPU", GPU_A0),), discrete=(("NVIDIA-GPU", 4),))),
        swarm.node_view(node_json("n3", "cpu-only", resources=())),
    ]
    found = swarm.inventory_of(nodes)
    assert [(d.uuid, d.node) for d in found.devices] == [(GPU_A0, "n1"), (GPU_A1, "n2")]
    assert found.note == ""
    Ledger(found.devices)  # one inventory for the whole cluster: no UUID twice


def test_a_cluster_that_advertises_no_devices_says_so():
    found = swarm.inventory_of([swarm.node_view(node_json(resources=(), discrete=(("NVIDIA-GPU", 2),)))])
    assert found.devices == ()
    assert "no Swarm node advertises" in found.note


# --- the engine-version guard ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("20.10.24+dfsg1", (20, 10)),
        ("23.0.0", (23, 0)),
        ("v24.0.7", (24, 0)),
        ("26.1.3-1.fc40", (26, 1)),
        ("", (0, 0)),
        ("master-dockerproject-2026", (0, 0)),
    ],
)
def test_engine_version_reads_major_and_minor(text, expected):
    assert swarm.engine_version(text) == expected


def _nodes(*versions):
    return [swarm.NodeView(f"id{i}", hostname=f"node-{i}", engine_version=v) for i, v in enumerate(versions)]


def test_not_requesting_generic_resources_never_raises_whatever_the_engines():
    swarm.check_generic_request(False, _nodes("20.10.24+dfsg1", "", "garbage"))


def test_requesting_generic_resources_on_engines_of_23_or_later_passes():
    swarm.check_generic_request(True, _nodes("23.0.0", "24.0.7", "27.3.1"))
    swarm.check_generic_request(True, [])


def test_requesting_generic_resources_with_an_engine_below_23_is_refused_naming_the_node_and_version():
    with pytest.raises(swarm.SwarmConfigError) as e:
        swarm.check_generic_request(True, _nodes("24.0.7", "20.10.24+dfsg1", "25.0.0"))
    text = str(e.value)
    assert "\n" not in text
    assert "node-1 (20.10.24+dfsg1)" in text
    assert "node-0" not in text and "node-2" not in text


def test_an_unreadable_engine_version_counts_as_too_old():
    with pytest.raises(swarm.SwarmConfigError, match=r"node-1 \(unknown\)"):
        swarm.check_generic_request(True, _nodes("24.0.7", ""))
    with pytest.raises(swarm.SwarmConfigError, match=r"node-0 \(dev\)"):
        swarm.check_generic_request(True, _nodes("dev"))


# --- home and mounts -------------------------------------------------------------------------------
def test_check_home_mode_accepts_the_two_modes():
    swarm.check_home_mode(swarm.HOME_SHARED, "/srv/homes")
    swarm.check_home_mode(swarm.HOME_NODE, "")  # the shared root is not used on home nodes


@pytest.mark.parametrize(
    "mode, root, words",
    [
        ("nfs", "/srv/homes", "swarm_home_mode"),
        (swarm.HOME_SHARED, "", "absolute path"),
        (swarm.HOME_SHARED, "srv/homes", "absolute path"),
    ],
)
def test_check_home_mode_refuses_an_unknown_mode_or_a_relative_shared_root(mode, root, words):
    with pytest.raises(swarm.SwarmConfigError, match=words):
        swarm.check_home_mode(mode, root)


def layer(**changes):
    base = container.ContainerPlan(
        hub_id="hub",
        username="Ann_B",
        server_name="big",
        home_volume="jupyterhub-user-_41nn_5f_42",
        devices=(GPU_A0,),
        charged_to="students",
        lease="L1",
        profile="gpu",
        binds={
            "/srv/courses/ml": {"bind": "/home/jovyan/course", "mode": "ro"},
            "datasets": {"bind": "/data", "mode": "rw"},
        },
    )
    return dataclasses.replace(base, **changes)


def plan(**changes):
    changes.setdefault("layer", layer())
    changes.setdefault("node", "n1")
    changes.setdefault("shared_root", "/srv/homes/")
    return swarm.ServicePlan(**changes)


def test_home_source_is_a_folder_named_volume_safe_under_the_shared_root():
    assert container.volume_safe("Ann_B") == "_41nn_5f_42"
    assert swarm.home_source(plan()) == "/srv/homes/_41nn_5f_42"


def test_home_source_on_a_home_node_is_the_named_volume():
    assert swarm.home_source(plan(home_mode=swarm.HOME_NODE)) == "jupyterhub-user-_41nn_5f_42"


def test_mounts_in_shared_path_mode_bind_the_home_folder_and_keep_course_material():
    mounts = swarm.mounts(plan(shm_bytes=2 * 1024**3))
    assert mounts == [
        {"Type": "bind", "Source": "/srv/homes/_41nn_5f_42", "Target": "/home/jovyan", "ReadOnly": False},
        {"Type": "bind", "Source": "/srv/courses/ml", "Target": "/home/jovyan/course", "ReadOnly": True},
        {"Type": "volume", "Source": "datasets", "Target": "/data", "ReadOnly": False},
        {"Type": "tmpfs", "Target": "/dev/shm", "TmpfsOptions": {"SizeBytes": 2 * 1024**3}},
    ]


def test_mounts_on_a_home_node_mount_the_home_as_a_named_volume_never_as_a_bind():
    mounts = swarm.mounts(plan(home_mode=swarm.HOME_NODE))
    assert mounts[0] == {
        "Type": "volume",
        "Source": "jupyterhub-user-_41nn_5f_42",
        "Target": "/home/jovyan",
        "ReadOnly": False,
    }
    assert all(m["Type"] != "tmpfs" for m in mounts)  # no shm size: Swarm's default /dev/shm


def test_the_admins_extra_binds_are_binds_or_volumes_by_their_source():
    extra = {"/srv/scratch": {"bind": "/scratch", "mode": "ro"}, "models": {"bind": "/models"}}
    by_target = {m["Target"]: m for m in swarm.mounts(plan(), extra)}
    assert by_target["/scratch"] == {"Type": "bind", "Source": "/srv/scratch", "Target": "/scratch", "ReadOnly": True}
    assert by_target["/models"] == {"Type": "volume", "Source": "models", "Target": "/models", "ReadOnly": False}


@pytest.mark.parametrize(
    "extra",
    [
        {"/var/run/docker.sock": {"bind": "/var/run/docker.sock"}},
        {"/run": {"bind": "/host-run", "mode": "ro"}},
        {"/": {"bind": "/host"}},
    ],
)
def test_mounts_refuse_the_docker_socket_from_the_admins_binds(extra):
    with pytest.raises(container.ContainerConfigError, match="Docker socket"):
        swarm.mounts(plan(), extra)


def test_mounts_refuse_the_docker_socket_as_course_material():
    with pytest.raises(container.ContainerConfigError, match="Docker socket"):
        swarm.mounts(plan(layer=layer(binds={"/var/run": {"bind": "/mnt", "mode": "ro"}})))


# --- placement, labels, resources ---------------------------------------------------------------------
def test_constraints_pin_a_gpu_server_to_its_node_after_the_admins():
    assert swarm.constraints(plan(), ["node.labels.pool==teaching"]) == [
        "node.labels.pool==teaching",
        "node.id==n1",
    ]


def test_a_cpu_server_has_only_the_admins_constraints():
    assert swarm.constraints(plan(node=""), ["node.role==worker"]) == ["node.role==worker"]
    assert swarm.constraints(plan(node="")) == []


def test_service_labels_are_the_container_labels_plus_the_node():
    labels = swarm.service_labels(plan())
    assert labels == {**container.labels(layer()), swarm.LABEL_NODE: "n1"}
    assert labels[container.LABEL_DEVICES] == GPU_A0 and labels[container.LABEL_LEASE] == "L1"


def test_task_resources_carry_the_limits_and_no_generic_request_by_default():
    assert swarm.task_resources(plan(), 4 * 1024**3, 1.5) == {
        "Limits": {"Pids": container.DEFAULT_PIDS_LIMIT, "MemoryBytes": 4 * 1024**3, "NanoCPUs": 1_500_000_000}
    }
    assert swarm.task_resources(plan(layer=layer(pids_limit=64)), None, None) == {"Limits": {"Pids": 64}}


def test_task_resources_request_generic_resources_only_when_the_plan_has_them():
    resources = swarm.task_resources(plan(generic={"NVIDIA-GPU": 2, "NVIDIA-MIG-1G.10GB": 1}), None, 2)
    assert resources["Limits"] == {"Pids": container.DEFAULT_PIDS_LIMIT, "NanoCPUs": 2_000_000_000}
    assert resources["Reservations"] == {
        "GenericResources": [
            {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}},
            {"DiscreteResourceSpec": {"Kind": "NVIDIA-MIG-1G.10GB", "Value": 1}},
        ]
    }


def test_task_resources_give_the_exact_nano_cpus_of_a_decimal_cpu_limit():
    assert swarm.task_resources(plan(), None, 2.01)["Limits"]["NanoCPUs"] == 2_010_000_000


def test_generic_request_counts_devices_per_advertised_kind():
    view = swarm.node_view(
        node_json(
            resources=(
                ("NVIDIA-GPU", GPU_A0),
                ("NVIDIA-GPU", GPU_A1),
                ("NVIDIA-MIG-1G.10GB", MIG_A0),
                ("NVIDIA-MIG-1G.10GB", MIG_A1),
            )
        )
    )
    devices = swarm.devices_of(view)
    counts = swarm.generic_request(devices)
    assert counts == {"NVIDIA-GPU": 2, "NVIDIA-MIG-1G.10GB": 2}
    assert set(counts) <= {kind for kind, _ in view.resources}  # what is requested is what nodes advertise
    assert swarm.generic_request(devices[:1] + devices[3:]) == {"NVIDIA-GPU": 1, "NVIDIA-MIG-1G.10GB": 1}
    assert swarm.generic_request([]) == {}


# --- tasks and the service's state -------------------------------------------------------------------
def test_task_view_reads_an_engine_api_task():
    view = swarm.task_view(
        task_json("t1", state="failed", desired="shutdown", exit_code=137, err="task: non-zero exit")
    )
    assert view == swarm.TaskView(
        id="t1",
        node="n1",
        state="failed",
        desired="shutdown",
        exit_code=137,
        message="task: non-zero exit",
        updated="2026-11-26T10:00:00.1Z",
        env=("A=1", f"NVIDIA_VISIBLE_DEVICES={GPU_A0}"),
    )
    assert swarm.env_devices(view.env) == (GPU_A0,)


def test_a_service_without_tasks_yet_is_created():
    assert swarm.service_state([]) == ("created", 0, "")


def test_a_running_task_makes_the_service_run_on_its_node():
    tasks = [
        task("old", node="n2", state="failed", desired="shutdown", exit_code=1, updated="2026-11-26T10:00:00.1Z"),
        task("new", node="n1", state="running", updated="2026-11-26T10:00:09.1Z"),
    ]
    assert swarm.service_state(tasks) == ("running", 0, "n1")


def test_a_task_still_running_on_a_down_node_counts_as_running_though_the_manager_wants_it_shut_down():
    tasks = [
        task("on-down-node", node="n1", state="running", desired="shutdown", updated="2026-11-26T10:00:00.1Z"),
        task("replacement", node="", state="pending", desired="running", updated="2026-11-26T10:05:00.1Z"),
    ]
    assert swarm.service_state(tasks) == ("running", 0, "n1")


def test_the_first_task_not_yet_running_makes_the_service_created():
    assert swarm.service_state([task("t1", node="n1", state="pending", desired="running")]) == ("created", 0, "n1")


@pytest.mark.parametrize("desired", ["running", "ready"])  # ready: Swarm waits out the restart delay
def test_a_replacement_task_after_a_failure_makes_the_service_restarting_which_counts_as_running(desired):
    tasks = [
        task("t1", node="n1", state="failed", desired="shutdown", exit_code=137, updated="2026-11-26T10:00:00.1Z"),
        task("t2", node="n1", state="ready", desired=desired, updated="2026-11-26T10:00:01.1Z"),
    ]
    state, code, node = swarm.service_state(tasks)
    assert (state, code, node) == ("restarting", 0, "n1")
    view = ContainerView(id="s", labels={}, devices=(GPU_A0,), state=state)
    assert view.running and view.may_hold_devices


def test_a_replacement_task_that_is_shut_down_does_not_hold_the_service():
    tasks = [
        task("t1", node="n1", state="failed", desired="shutdown", exit_code=137, updated="2026-11-26T10:00:00.1Z"),
        task("t2", node="n1", state="ready", desired="shutdown", updated="2026-11-26T10:00:01.1Z"),
    ]
    assert swarm.service_state(tasks) == ("exited", 1, "n1")


def test_all_tasks_ended_the_newest_says_how():
    failed = task("t1", node="n2", state="failed", desired="shutdown", exit_code=3, updated="2026-11-26T10:00:00.1Z")
    complete = task("t2", node="n1", state="complete", desired="shutdown", updated="2026-11-26T10:02:00.1Z")
    assert swarm.service_state([complete, failed]) == ("exited", 0, "n1")
    assert swarm.service_state([failed]) == ("exited", 3, "n2")


def test_a_failed_task_without_an_exit_code_exits_with_1():
    rejected = task("t1", state="rejected", desired="shutdown", err="no suitable node")
    failed = task("t2", state="failed", desired="shutdown", updated="2026-11-26T10:03:00.1Z")
    assert rejected.exit_code == 0 and rejected.message == "no suitable node"
    assert swarm.service_state([failed, rejected]) == ("exited", 1, "n1")
    assert swarm.service_state([rejected]) == ("exited", 1, "n1")


def test_the_newest_task_is_found_by_time_not_by_how_its_timestamp_is_spelled():
    older = task("t1", state="failed", desired="shutdown", exit_code=2, updated="2026-11-26T10:00:05Z")
    newer = task("t2", state="complete", desired="shutdown", exit_code=0, updated="2026-11-26T10:00:05.5Z")
    assert swarm.service_state([older, newer]) == ("exited", 0, "n1")


@pytest.mark.parametrize(
    "env, devices",
    [
        (["NVIDIA_VISIBLE_DEVICES=void"], ()),
        (["NVIDIA_VISIBLE_DEVICES=none"], ()),
        (["NVIDIA_VISIBLE_DEVICES="], ()),
        ([], ()),
        (["CUDA_VISIBLE_DEVICES=0", "PATH=/usr/bin"], ()),
        (["A=1", f"NVIDIA_VISIBLE_DEVICES={GPU_A0}"], (GPU_A0,)),
        ([f"NVIDIA_VISIBLE_DEVICES={GPU_A0},{MIG_A0}"], (GPU_A0, MIG_A0)),
        ([f"NVIDIA_VISIBLE_DEVICES={GPU_A0},,{GPU_A1}"], (GPU_A0, GPU_A1)),
    ],
)
def test_env_devices_are_the_uuids_the_nvidia_runtime_is_handed(env, devices):
    assert swarm.env_devices(env) == devices


# --- the ledger across nodes --------------------------------------------------------------------------
def on(node, n, model="A100", start=0):
    return [Device(f"GPU-{node}-{i}", model=model, index=i, node=node) for i in range(start, start + n)]


def node_of(led, lease):
    return {led.devices[u].node for u in lease.devices}


def test_a_two_device_request_never_spans_nodes():
    led = Ledger(on("n1", 2) + on("n2", 2))
    led.request("a/", Request(1, node="n1"))
    led.request("b/", Request(1, node="n2"))
    assert len(led.free(Request(1))) == 2
    assert led.request("c/", Request(2)) is None  # one free on each node is not two on one
    assert led.lease_of("c/") is None and led.waiter("c/") is not None
    (grant,) = led.release(led.lease_of("b/").id)
    assert grant.owner == "c/" and node_of(led, grant) == {"n2"} and len(grant.devices) == 2


def test_best_fit_picks_the_node_with_the_fewest_free_devices_that_still_fits():
    led = Ledger(on("n1", 1) + on("n2", 2) + on("n3", 3))
    assert node_of(led, led.request("two/", Request(2))) == {"n2"}
    assert node_of(led, led.request("one/", Request(1))) == {"n1"}
    assert node_of(led, led.request("three/", Request(3))) == {"n3"}


def test_best_fit_keeps_the_emptiest_node_whole_for_a_large_request():
    led = Ledger(on("n1", 4) + on("n2", 2))
    for owner in ("a/", "b/"):
        assert node_of(led, led.request(owner, Request(1))) == {"n2"}
    assert len(led.request("big/", Request(4)).devices) == 4


def test_a_request_no_single_node_can_serve_is_refused_though_the_cluster_has_enough():
    led = Ledger(on("n1", 1) + on("n2", 1) + on("n3", 1))
    assert led.usable(Request(2)) == 3 and led.largest(Request(2)) == 1
    with pytest.raises(AllocationError, match="largest node has 1"):
        led.request("a/", Request(2))
    assert led.waiting() == [] and led.leases == {}


def test_a_quarantine_that_leaves_no_node_large_enough_refuses_the_request():
    led = Ledger(on("n1", 2) + on("n2", 1))
    led.block("node:n1", ["GPU-n1-0"], "down")
    with pytest.raises(AllocationError, match="largest node has 1"):
        led.request("a/", Request(2))


def test_a_request_for_one_node_only_gets_that_nodes_devices():
    led = Ledger(on("n1", 2) + on("n2", 2))
    assert node_of(led, led.request("a/", Request(2, node="n2"))) == {"n2"}
    assert led.request("b/", Request(1, node="n2")) is None  # n1 is free, but b waits for n2
    assert led.largest(Request(1, node="n2")) == 2
    (grant,) = led.release(led.lease_of("a/").id)
    assert grant.owner == "b/" and node_of(led, grant) == {"n2"}


def test_a_request_for_an_unknown_node_can_never_be_served():
    led = Ledger(on("n1", 2))
    with pytest.raises(AllocationError):
        led.request("a/", Request(1, node="gone"))


def test_largest_is_usable_on_a_single_host():
    led = Ledger(on("", 4))
    led.block("health:GPU--1", ["GPU--1"], "lost")
    led.request("a/", Request(1))
    for request in (Request(1), Request(2), Request(1, model="A100"), Request(1, model="V100")):
        assert led.largest(request) == led.usable(request)
    assert led.largest(Request(1)) == 3
    with pytest.raises(AllocationError, match="this host has 3"):
        led.request("b/", Request(4))


def test_ledger_nodes_lists_each_nodes_devices():
    led = Ledger(on("n1", 2) + on("n2", 1))
    assert {k: sorted(v) for k, v in led.nodes().items()} == {"n1": ["GPU-n1-0", "GPU-n1-1"], "n2": ["GPU-n2-0"]}
    assert set(Ledger(on("", 2)).nodes()) == {""}


def test_one_node_with_two_models_serves_a_request_for_any_model_from_both():
    led = Ledger(on("n1", 1, "A100") + on("n1", 1, "V100", start=1) + on("n2", 1, "A100"))
    assert node_of(led, led.request("a/", Request(2))) == {"n1"}
    assert led.request("b/", Request(1, model="V100")) is None


# Random grants and releases over three nodes: the ledger's promises hold at every step.
CLUSTER = (
    on("n1", 3)
    + on("n2", 1)
    + on("n2", 1, "V100", start=1)
    + on("n3", 2)
    + [Device(f"MIG-n3-{i}", model="A100", mig_profile="1g.10gb", index=i, node="n3") for i in range(2)]
)
REQUESTS = st.sampled_from(
    [
        Request(1),
        Request(2),
        Request(3),
        Request(1, model="V100"),
        Request(2, model="A100"),
        Request(1, node="n2"),
        Request(2, node="n3"),
        Request(1, mig_profile="1g.10gb"),
        Request(2, mig_profile="1g.10gb"),
    ]
)
OWNERS = st.sampled_from([f"u{i}/" for i in range(8)])
NODES = st.sampled_from(["n1", "n2", "n3"])


class NodeLedgerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.led = Ledger(CLUSTER)
        self.asked: dict[str, Request] = {}

    def _granted(self, leases):
        leases = list(leases) + self.led.granted_aside()
        for lease in leases:
            request = self.asked[lease.owner]
            assert len(lease.devices) == request.count
            assert len(node_of(self.led, lease)) == 1, lease  # a lease never spans nodes
            assert all(request.accepts(self.led.devices[u]) for u in lease.devices)
            assert not any(self.led.quarantined(u) for u in lease.devices), lease  # blocked: never granted

    @rule(owner=OWNERS, request=REQUESTS, priority=st.integers(0, 1))
    def ask(self, owner, request, priority):
        if self.led.lease_of(owner) or self.led.waiter(owner):
            return
        self.asked[owner] = request
        if self.led.largest(request) < request.count:
            with pytest.raises(AllocationError):
                self.led.request(owner, request, priority)
            return
        lease = self.led.request(owner, request, priority)
        self._granted([lease] if lease else [])

    @rule(owner=OWNERS)
    def release(self, owner):
        lease = self.led.lease_of(owner)
        if lease is not None:
            self._granted(self.led.release(lease.id))

    @rule(owner=OWNERS)
    def cancel(self, owner):
        self._granted(self.led.cancel(owner))

    @rule(node=NODES)
    def node_down(self, node):
        self.led.block(NODE + node, self.led.nodes()[node], f"node {node} is down")
        self._granted(self.led.dispatch())  # what reconcile does next

    @rule(node=NODES)
    def node_back(self, node):
        self._granted(self.led.lift(NODE + node))

    @invariant()
    def no_device_is_held_twice(self):
        held = [u for lease in self.led.leases.values() for u in lease.devices]
        assert len(held) == len(set(held))
        assert self.led.holder == {u: lease.id for lease in self.led.leases.values() for u in lease.devices}

    @invariant()
    def every_lease_is_on_one_node(self):
        for lease in self.led.leases.values():
            assert len(node_of(self.led, lease)) == 1, lease

    @invariant()
    def free_is_neither_held_nor_blocked(self):
        free = {d.uuid for d in self.led.free()}
        blocked = {u for u in self.led.devices if self.led.quarantined(u)}
        assert free == set(self.led.devices) - set(self.led.holder) - blocked

    @invariant()
    def the_first_servable_waiter_fits_on_no_node(self):
        for w in self.led.waiting():
            if self.led.largest(w.request) < w.request.count:
                continue  # unservable while quarantined: skipped, holds nobody up
            per_node: dict[str, int] = {}
            for d in self.led.free(w.request):
                per_node[d.node] = per_node.get(d.node, 0) + 1
            assert max(per_node.values(), default=0) < w.request.count, (w, per_node)
            break


NodeLedgerMachine.TestCase.settings = hsettings(max_examples=80, stateful_step_count=40, deadline=None)
TestNodeLedger = NodeLedgerMachine.TestCase


# --- the GPU service with Swarm nodes --------------------------------------------------------------
SWARM_GPUS = tuple(on("n1", 2) + on("n2", 2))


class SwarmStandIn(EngineStandIn):
    """The engine stand-in as a Swarm manager: it also answers `nodes()`, and each container's view
    names the node its devices are on."""

    def __init__(self, devices=SWARM_GPUS):
        super().__init__()
        self.node_of = {d.uuid: d.node for d in devices}
        self.node_views = {
            n: swarm.NodeView(n, hostname=f"host-{n}", engine_version="24.0.7")
            for n in sorted(set(self.node_of.values()))
        }

    def set_node(self, node_id, **changes):
        self.node_views[node_id] = dataclasses.replace(self.node_views[node_id], **changes)

    async def nodes(self):
        self.calls.append(("nodes", ""))
        return list(self.node_views.values())

    def _view(self, c):
        nodes = {self.node_of[d] for d in c.devices if d in self.node_of}
        return dataclasses.replace(super()._view(c), node=nodes.pop() if len(nodes) == 1 else "")


class RecordingOps(Operations):
    """Operations that remember why each lease ended."""

    def __init__(self, svc):
        super().__init__(devices=svc._devices, leases=svc._leases, log=svc.log)
        self.ended: list[tuple[str, str]] = []

    def lease_ended(self, lease, reason):
        self.ended.append((lease.owner, reason))
        super().lease_ended(lease, reason)


def swarm_service(engine, devices=SWARM_GPUS, clock=None, **config):
    config.setdefault("reconcile_interval", 0)
    config.setdefault("node_settle", 30)
    config.setdefault("orphan_grace", 0)
    return GPUService(
        ServiceConfig(hub_id="hub", **config),
        engine,
        lambda: Inventory(tuple(devices), "swarm"),
        log=logging.getLogger("test-gpuhub"),
        clock=clock or Clock(),
        ops=RecordingOps,
    )


def node_keys(svc):
    return {k for k in svc.ledger.quarantine if k.startswith(NODE)}


def free_nodes(svc):
    return sorted({d.node for d in svc.ledger.free()})


async def test_a_node_going_down_blocks_all_its_devices_and_keeps_its_leases_stale():
    engine = SwarmStandIn()
    svc = swarm_service(engine)
    await svc.ready()
    cid = await start_server(svc, engine, "alice")
    assert holders(svc) == {"GPU-n1-0": "alice/"}  # a tie goes to the first node
    assert not svc.stale("alice/")
    engine.set_node("n1", state="down")
    await svc.reconcile()
    for uuid in ("GPU-n1-0", "GPU-n1-1"):  # held and free alike
        (reason,) = svc.ledger.quarantined(uuid)
        assert reason.startswith("node host-n1 is down (since ")
    assert svc.stale("alice/") and svc.ledger.lease_of("alice/").container == cid
    assert holders(svc) == {"GPU-n1-0": "alice/"}
    assert free_nodes(svc) == ["n2"]
    assert svc.usable(Request(2)) == 2 and svc.nodes["n1"].state == "down"


@pytest.mark.parametrize(
    "changes, words",
    [({"availability": "drain"}, "is set to drain (no new servers)"), ({"state": "disconnected"}, "is disconnected")],
)
async def test_a_drained_or_disconnected_node_takes_no_new_servers(changes, words):
    engine = SwarmStandIn()
    svc = swarm_service(engine)
    await svc.ready()
    await start_server(svc, engine, "alice")
    engine.set_node("n1", **changes)
    await svc.reconcile()
    reasons = [svc.ledger.quarantined(u) for u in ("GPU-n1-0", "GPU-n1-1")]
    assert [len(r) for r in reasons] == [1, 1] and all(words in r[0] for r in reasons)
    assert svc.stale("alice/")


async def test_a_node_gone_from_the_swarm_is_blocked_naming_its_id():
    engine = SwarmStandIn()
    svc = swarm_service(engine)
    await svc.ready()
    del engine.node_views["n2"]
    await svc.reconcile()
    assert svc.ledger.quarantined("GPU-n2-0")[0].startswith("node n2 is gone from the swarm")
    assert free_nodes(svc) == ["n1"]


async def look_at_nodes(svc):
    """The node part of a reconcile pass alone: read the manager's nodes, apply them, dispatch.

    Lets a test look at nodes without a whole reconcile; the tests below check that a whole
    `reconcile()` keeps a down node's block too (it once took the key for a container id).
    """
    svc._apply_nodes(await svc._read_nodes())
    svc._wake(svc.ledger.dispatch())


async def test_while_a_node_is_down_new_requests_go_to_another_node_or_wait():
    engine = SwarmStandIn()
    svc = swarm_service(engine)
    await svc.ready()
    await start_server(svc, engine, "alice")  # n1
    engine.set_node("n1", state="down")
    await svc.reconcile()
    await start_server(svc, engine, "bob")
    await start_server(svc, engine, "carl")
    assert {d: o for d, o in holders(svc).items() if o != "alice/"} == {"GPU-n2-0": "bob/", "GPU-n2-1": "carl/"}
    ticket = svc.reserve("dave/", "dave", admit_for("dave"))
    assert ticket.future is not None and svc.ledger.waiter("dave/") is not None  # queued, not sent to n1
    await look_at_nodes(svc)
    assert not ticket.future.done() and svc.ledger.lease_of("dave/") is None


def test_with_every_node_of_a_kind_down_a_request_for_it_is_refused_with_a_reason():
    led = Ledger(SWARM_GPUS)
    for node in ("n1", "n2"):
        led.block(NODE + node, led.nodes()[node], f"node {node} is down")
    with pytest.raises(AllocationError, match="largest node has 0"):
        led.request("a/", Request(1))


async def test_a_down_nodes_block_survives_the_next_reconcile_pass():
    engine = SwarmStandIn()
    svc = swarm_service(engine)
    await svc.ready()
    await start_server(svc, engine, "alice", profile="gpu2")  # both of n1
    await start_server(svc, engine, "bob")  # n2
    engine.set_node("n1", state="down")
    await svc.reconcile()
    await start_server(svc, engine, "carl")  # n2's last
    ticket = svc.reserve("dave/", "dave", admit_for("dave"))
    await svc.stop("alice/", svc.ledger.lease_of("alice/").container, 10)  # n1's devices stay blocked
    await svc.reconcile()
    assert node_keys(svc) == {NODE + "n1"}
    assert not ticket.future.done() and svc.ledger.lease_of("dave/") is None  # nothing from the down node


async def test_a_node_back_is_not_trusted_by_reconcile_before_it_has_settled():
    engine, clock = SwarmStandIn(), Clock()
    svc = swarm_service(engine, clock=clock, node_settle=30)
    await svc.ready()
    await start_server(svc, engine, "alice")  # n1
    engine.set_node("n1", state="down")
    await svc.reconcile()
    engine.set_node("n1", state="ready")
    await svc.reconcile()  # back, first seen: not trusted yet
    clock.now += 10
    await svc.reconcile()
    assert node_keys(svc) == {NODE + "n1"} and svc.stale("alice/")


async def test_a_node_back_is_trusted_only_after_it_has_settled_on_the_services_clock():
    engine, clock = SwarmStandIn(), Clock()
    svc = swarm_service(engine, clock=clock, node_settle=30)
    await svc.ready()
    await start_server(svc, engine, "alice")  # n1
    await start_server(svc, engine, "bob")  # n1 (best fit)
    await start_server(svc, engine, "carl")  # n2
    engine.set_node("n1", state="down")
    await svc.reconcile()
    await start_server(svc, engine, "dave")  # n2's last
    ticket = svc.reserve("erin/", "erin", admit_for("erin"))
    await svc.stop("bob/", svc.ledger.lease_of("bob/").container, 10)  # frees nothing: n1 is down
    await look_at_nodes(svc)
    assert ticket.future is not None and not ticket.future.done()

    engine.set_node("n1", state="ready")
    await look_at_nodes(svc)  # back, first seen
    clock.now += 29.9
    await look_at_nodes(svc)
    assert node_keys(svc) == {NODE + "n1"} and svc.stale("alice/") and not ticket.future.done()
    clock.now += 0.1
    await look_at_nodes(svc)
    assert node_keys(svc) == set() and not svc.stale("alice/")
    assert ticket.future.done() and ticket.future.result().devices == ("GPU-n1-1",)


async def test_a_node_that_goes_down_again_before_it_settles_starts_settling_anew():
    engine, clock = SwarmStandIn(), Clock()
    svc = swarm_service(engine, clock=clock, node_settle=30)
    await svc.ready()
    engine.set_node("n1", state="down")
    await svc.reconcile()
    engine.set_node("n1", state="ready")
    await look_at_nodes(svc)
    clock.now += 20
    engine.set_node("n1", state="down")
    await look_at_nodes(svc)
    engine.set_node("n1", state="ready")
    clock.now += 20
    await look_at_nodes(svc)  # 40 s since it first came back, but only now back again
    clock.now += 29
    await look_at_nodes(svc)
    assert node_keys(svc) == {NODE + "n1"}
    clock.now += 1
    await look_at_nodes(svc)
    assert node_keys(svc) == set() and free_nodes(svc) == ["n1", "n2"]


async def test_a_service_removed_while_its_node_is_down_ends_its_lease_but_its_devices_wait_for_the_node():
    engine, clock = SwarmStandIn(), Clock()
    svc = swarm_service(engine, clock=clock, node_settle=30)
    await svc.ready()
    cid = await start_server(svc, engine, "alice", profile="gpu2")  # both of n1
    await start_server(svc, engine, "bob", profile="gpu2")  # both of n2
    engine.set_node("n1", state="down")
    await svc.reconcile()
    ticket = svc.reserve("carl/", "carl", admit_for("carl"))
    del engine.containers[cid]  # `docker service rm` on the manager: the service is gone
    assert await svc.poll("alice/", cid) == 0  # the engine's word: 404
    assert svc.ledger.lease_of("alice/") is None and ("alice/", "lost") in svc.ops.ended
    assert holders(svc) == {"GPU-n2-0": "bob/", "GPU-n2-1": "bob/"}
    assert svc.ledger.free() == [] and not ticket.future.done()  # its container may still run on n1
    engine.set_node("n1", state="ready")
    await look_at_nodes(svc)
    clock.now += 29
    await look_at_nodes(svc)
    assert svc.ledger.free() == [] and not ticket.future.done()
    clock.now += 1
    await look_at_nodes(svc)
    assert ticket.future.result().devices == ("GPU-n1-0",) and free_nodes(svc) == ["n1"]


async def test_a_service_gone_in_the_pass_that_first_sees_its_node_down_frees_nothing_on_that_node():
    engine = SwarmStandIn()
    svc = swarm_service(engine)
    await svc.ready()
    cid = await start_server(svc, engine, "alice", profile="gpu2")  # both of n1
    await start_server(svc, engine, "bob", profile="gpu2")  # both of n2
    ticket = svc.reserve("carl/", "carl", admit_for("carl"))
    engine.set_node("n1", state="down")
    del engine.containers[cid]  # between two passes: n1 went down and alice's service was removed
    await svc.reconcile()
    assert node_keys(svc) == {NODE + "n1"}
    assert not ticket.future.done() and svc.ledger.lease_of("carl/") is None


async def test_an_admin_releasing_a_down_node_ends_its_leases_and_its_devices_wait_for_the_node():
    engine, clock = SwarmStandIn(), Clock()
    svc = swarm_service(engine, clock=clock, node_settle=30)
    await svc.ready()
    cid = await start_server(svc, engine, "alice", profile="gpu2")  # both of n1
    await start_server(svc, engine, "bob", profile="gpu2")  # both of n2
    engine.set_node("n1", state="down")
    await svc.reconcile()
    ticket = svc.reserve("carl/", "carl", admit_for("carl"))
    with pytest.raises(LiftRefused, match="not marked down"):
        await svc.release_node("n2")
    released = await svc.release_node("n1")
    assert released == ["alice/"]
    assert ("remove", "") in engine.calls and cid not in engine.containers
    assert ("alice/", "admin") in svc.ops.ended and svc.ledger.lease_of("alice/") is None
    assert not svc.stale("alice/")
    # Nothing can run on a node that is down: its devices stay blocked, carl keeps waiting.
    assert node_keys(svc) == {NODE + "n1"} and not ticket.future.done()
    engine.set_node("n1", state="ready")
    await svc.reconcile()
    clock.now += 30
    await svc.reconcile()
    assert ticket.future.result().devices == ("GPU-n1-0",)
    assert [d.uuid for d in svc.ledger.free()] == ["GPU-n1-1"]


async def test_an_admin_release_ends_the_lease_even_if_the_down_nodes_service_cannot_be_confirmed_removed():
    engine = SwarmStandIn()
    svc = swarm_service(engine)
    await svc.ready()
    await start_server(svc, engine, "alice")
    engine.set_node("n1", state="down")
    await svc.reconcile()
    engine.fail("remove")  # the task is still "running" on the unreachable node
    assert await svc.release_node("n1") == ["alice/"]
    assert ("alice/", "admin") in svc.ops.ended and holders(svc) == {}


async def test_a_down_nodes_device_is_liftable_and_lifting_it_ends_the_nodes_stale_leases():
    engine = SwarmStandIn()
    svc = swarm_service(engine)
    await svc.ready()
    await start_server(svc, engine, "alice")  # GPU-n1-0
    assert not svc.liftable("GPU-n1-1")  # not quarantined at all
    engine.set_node("n1", state="down")
    await svc.reconcile()
    assert svc.liftable("GPU-n1-0") and svc.liftable("GPU-n1-1")
    assert not svc.liftable("GPU-n2-0")
    lifted = await svc.lift_device("GPU-n1-1")  # a free device of the node: the whole node's leases end
    assert len(lifted) == 1 and lifted[0].startswith("node host-n1 is down")
    assert svc.ledger.lease_of("alice/") is None and ("alice/", "admin") in svc.ops.ended
    assert node_keys(svc) == {NODE + "n1"} and free_nodes(svc) == ["n2"]  # still down: still blocked


async def _down_node_with_failed_starts():
    engine = SwarmStandIn()
    svc = swarm_service(engine)
    await svc.ready()
    svc.ledger.block("health:GPU-n1-0", ["GPU-n1-0"], "failed 3 starts in a row")
    engine.set_node("n1", state="down")
    await svc.reconcile()
    assert svc.liftable("GPU-n1-0") and len(svc.ledger.quarantined("GPU-n1-0")) == 2
    return svc


async def test_a_down_nodes_device_that_also_failed_starts_keeps_only_the_node_block():
    svc = await _down_node_with_failed_starts()
    await svc.lift_device("GPU-n1-0")
    assert [r[:22] for r in svc.ledger.quarantined("GPU-n1-0")] == ["node host-n1 is down ("]


async def test_lift_device_reports_every_reason_it_lifted():
    svc = await _down_node_with_failed_starts()
    lifted = await svc.lift_device("GPU-n1-0")
    assert len(lifted) == 2 and any(r.startswith("node host-n1 is down") for r in lifted)


async def test_a_hub_restarting_while_a_node_is_down_keeps_that_nodes_servers_stale():
    engine = SwarmStandIn()
    first = swarm_service(engine)
    await first.ready()
    cid = await start_server(first, engine, "alice")
    first.close()
    engine.set_node("n1", state="down")
    svc = swarm_service(engine)
    await svc.ready()
    assert svc.ledger.lease_of("alice/").container == cid and svc.stale("alice/")
    assert node_keys(svc) == {NODE + "n1"} and free_nodes(svc) == ["n2"]


async def test_a_single_host_engine_without_nodes_never_blocks_a_node():
    engine = EngineStandIn()
    assert not hasattr(engine, "nodes")
    svc = swarm_service(engine, devices=on("", 2))
    await svc.ready()
    cid = await start_server(svc, engine, "alice")
    await start_server(svc, engine, "bob")
    await svc.reconcile()
    await svc.stop("alice/", cid, 10)
    await svc.reconcile()
    assert node_keys(svc) == set() and svc.nodes == {} and not svc.stale("bob/")
    assert holders(svc) == {"GPU--1": "bob/"}
    assert not svc.liftable("GPU--1")
    with pytest.raises(LiftRefused, match="not quarantined"):
        await svc.lift_device("GPU--1")


async def test_a_node_paused_a_moment_ago_gets_no_new_server_and_one_back_but_settling_makes_starts_wait():
    engine = SwarmStandIn()
    clock = Clock()
    svc = swarm_service(engine, clock=clock, node_settle=30)
    await svc.ready()
    # The admin pauses n1 just now; no reconcile has run since. The next start reads the nodes.
    engine.set_node("n1", availability="pause")
    await svc.refresh_nodes()
    assert svc.node_refusal("n1") == "node host-n1 is set to pause (no new servers)"
    assert svc.node_refusal("n2") == ""
    await start_server(svc, engine, "alice")
    assert [u for u, o in holders(svc).items() if o == "alice/"] == ["GPU-n2-0"]
    # n1 is back but settling, n2 is paused: nothing can be handed out now, yet a start is not
    # refused as impossible (503): it waits, and is served once n1 has settled.
    engine.set_node("n1", availability="active")
    engine.set_node("n2", availability="pause")
    await svc.refresh_nodes()
    assert svc.ledger.free() == []  # n1 settling, n2 paused, GPU-n2-0 leased
    assert svc.usable(Request(1)) == 2
    waiting = asyncio.ensure_future(start_server(svc, engine, "bob", timeout=5))
    await settle()
    assert not waiting.done() and svc.position("bob/") is not None
    clock.now += 31
    await svc.refresh_nodes()
    await svc.reconcile()
    await asyncio.wait_for(waiting, 5)
    assert [u for u, o in holders(svc).items() if o == "bob/"][0].startswith("GPU-n1-")


def test_each_start_gets_a_service_name_of_its_own_within_swarms_limit():
    assert swarm.service_name("gpuhub-ada", "a1b2c3") == "gpuhub-ada-a1b2c3"
    long = swarm.service_name("gpuhub-" + "x" * 80, "a1b2c3")
    assert len(long) == swarm.SERVICE_NAME_MAX and long.endswith("-a1b2c3")
    assert swarm.service_name("gpuhub-" + "y" * 49 + "-", "a1b2c3").count("--") == 0
