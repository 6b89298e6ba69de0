"""scripts/swarm-join-node.sh's daemon.json, from `nvidia-smi -L` (spawner/swarm_node.py)."""

import io
import json

import pytest

from spawner import swarm, swarm_node

# As printed by a real 2 x H200 host (docs/results/swarm-node-config-h200x2-2026-11-27.txt).
REAL_H200X2 = """GPU 0: NVIDIA H200 (UUID: GPU-928940ec-4b2f-9c88-2a38-b2930187b08f)
GPU 1: NVIDIA H200 (UUID: GPU-92b320e6-0830-cb26-dd3f-65ad785bbfc6)
"""
# nvidia-smi's layout for a GPU in MIG mode (its slices are listed under it).
WITH_MIG = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-e3cc0000-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-cbe40000-0000-0000-0000-000000000000)
  MIG 3g.40gb     Device  0: (UUID: MIG-aaaa0000-0000-0000-0000-000000000000)
  MIG 1g.10gb     Device  1: (UUID: MIG-bbbb0000-0000-0000-0000-000000000000)
"""


def test_whole_gpus_are_advertised_in_nvidia_smi_order_with_their_model():
    resources, model = swarm_node.parse_nvidia_smi(REAL_H200X2)
    assert resources == [
        ("NVIDIA-GPU", "GPU-928940ec-4b2f-9c88-2a38-b2930187b08f"),
        ("NVIDIA-GPU", "GPU-92b320e6-0830-cb26-dd3f-65ad785bbfc6"),
    ]
    assert model == "NVIDIA H200"


def test_a_gpu_in_mig_mode_is_advertised_as_its_slices_only():
    resources, _ = swarm_node.parse_nvidia_smi(WITH_MIG)
    assert resources == [
        ("NVIDIA-GPU", "GPU-e3cc0000-0000-0000-0000-000000000000"),
        ("NVIDIA-MIG-3G.40GB", "MIG-aaaa0000-0000-0000-0000-000000000000"),
        ("NVIDIA-MIG-1G.10GB", "MIG-bbbb0000-0000-0000-0000-000000000000"),
    ]
    node = swarm.NodeView(id="n1", resources=tuple(resources))
    devices = swarm.devices_of(node)
    assert [(d.uuid[:8], d.mig_profile) for d in devices] == [
        ("GPU-e3cc", None),
        ("MIG-aaaa", "3g.40gb"),
        ("MIG-bbbb", "1g.10gb"),
    ]


def test_an_unreadable_line_is_refused_naming_it():
    with pytest.raises(swarm_node.NodeConfigError, match="line 2"):
        swarm_node.parse_nvidia_smi(REAL_H200X2.splitlines()[0] + "\nNo devices were found\n")


def test_the_nodes_own_settings_are_kept_and_gpuhubs_are_set():
    existing = {"log-driver": "journald", "runtimes": {"crun": {"path": "/usr/bin/crun"}}, "default-runtime": "runc"}
    config = swarm_node.daemon_config(existing, [("NVIDIA-GPU", "GPU-1")])
    assert config["log-driver"] == "journald" and "crun" in config["runtimes"]
    assert config["default-runtime"] == "nvidia" and config["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert config["no-new-privileges"] is True
    assert config["node-generic-resources"] == ["NVIDIA-GPU=GPU-1"]


def test_main_prints_the_merged_daemon_json_and_refuses_a_host_without_gpus(tmp_path, monkeypatch, capsys):
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"live-restore": False}))
    monkeypatch.setattr("sys.stdin", io.StringIO(REAL_H200X2))
    assert swarm_node.main([str(daemon)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["live-restore"] is False and len(printed["node-generic-resources"]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert swarm_node.main([str(daemon)]) == 1
    assert "lists no GPU" in capsys.readouterr().err
    daemon.write_text("{not json")
    monkeypatch.setattr("sys.stdin", io.StringIO(REAL_H200X2))
    assert swarm_node.main([str(daemon)]) == 1
    assert "unreadable" in capsys.readouterr().err
