"""Every metric the Grafana dashboard queries is on a running hub's /hub/metrics, with the labels it uses.

One real hub with two stand-in GPUs (tests/hardware/nvml_standin) and one GPU server whose GPU
reads idle from the start, so that within a minute every kind of series exists once: devices and
the queue, the held device's telemetry and its user, the server's GPU-idle seconds, then a
warning, a GPU-idle stop and the lease's end. Prometheus would see them over that server's life,
so the check reads the exposition twice (while the server runs, after it was stopped) and takes
both. The hub is scraped as monitoring/README.md tells a Prometheus to: a bearer token with only
`read:metrics`.
"""

import json
import os
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.hub import Hub, user_container

from ..unit.test_grafana_dashboard import legend_labels, names, queries

STANDIN = Path(__file__).resolve().parents[1] / "hardware" / "nvml_standin"
GPUS = [f"GPU-6a7f0000-0000-0000-0000-00000000000{i}" for i in range(2)]
MODEL = "NVIDIA H100 80GB HBM3"
IDLE_TIMEOUT, WARNING = 20, 10
GPU_CONFIG = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "default": True},
        {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}, "gpu_idle_timeout": f"{IDLE_TIMEOUT}s"},
    ],
    "gpus": [{"uuid": u, "model": MODEL, "memory_mib": 81559} for u in GPUS],
    "quota": {"default": {"profiles": ["cpu"]}, "groups": {"gpu-users": {"profiles": "*", "max_devices_per_user": 1}}},
}
NVML = {
    "gpus": [
        {"uuid": u, "name": MODEL, "memory_mib": 81559, "mig": "disabled", "utilization": 0, "memory_used_mib": 1490}
        for u in GPUS
    ]
}


@pytest.fixture(scope="module")
def metrics_hub(tmp_path_factory, test_image, test_network, chp_on_path):
    workdir = tmp_path_factory.mktemp("hub")
    (workdir / "gpus.json").write_text(json.dumps(GPU_CONFIG))
    (workdir / "nvml.json").write_text(json.dumps(NVML))
    pythonpath = os.pathsep.join(p for p in (str(STANDIN), os.environ.get("PYTHONPATH", "")) if p)
    hub = Hub(
        workdir,
        test_image,
        env={
            "GPUHUB_GPU_CONFIG": str(workdir / "gpus.json"),
            "GPUHUB_FAKE_NVML": str(workdir / "nvml.json"),
            "PYTHONPATH": pythonpath,
            "GPUHUB_MEM_LIMIT": "1G",
            "GPUHUB_TELEMETRY_INTERVAL": "1",
            "GPUHUB_CULL_WARNING": str(WARNING),
        },
    ).start()
    yield hub
    hub.stop()


def exposition(hub, token: str) -> dict[str, set[str]]:
    """Sample name -> the label names its samples carry, from the hub's text exposition."""
    r = requests.get(f"{hub.url}/hub/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_every_metric_the_dashboard_queries_is_on_a_running_hubs_metrics(metrics_hub, docker_client, username):
    hub = metrics_hub
    # The token monitoring/README.md has an admin make for Prometheus: read:metrics, nothing else.
    r = hub.api("POST", "/users/admin/tokens", json={"scopes": ["read:metrics"], "note": "prometheus"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert requests.get(f"{hub.url}/hub/metrics", timeout=30).status_code == 403
    assert hub.api("GET", "/users", headers={"Authorization": f"Bearer {token}"}).status_code == 403

    hub.api("POST", "/users", json={"usernames": [username]})
    assert hub.api("POST", "/groups/gpu-users").status_code in (201, 409)
    assert hub.api("POST", "/groups/gpu-users/users", json={"users": [username]}).ok
    r = hub.start_server(username, options={"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(username)
    running = wait_for(
        "the held device's telemetry and the server's GPU-idle seconds",
        lambda: (m := exposition(hub, token)).get("gpuhub_server_gpu_idle_seconds") and m,
        IDLE_TIMEOUT,
    )
    wait_for("the GPU-idle stop", lambda: user_container(docker_client, username) is None, IDLE_TIMEOUT + 30)
    stopped = wait_for(
        "the stop's counters", lambda: (m := exposition(hub, token)).get("gpuhub_leases_ended_total") and m, 15
    )
    seen = {name: running.get(name, set()) | stopped.get(name, set()) for name in running.keys() | stopped.keys()}

    missing = []
    for where, expr, legend in queries():
        found = names(expr)
        for metric, labels in found.items():
            if metric not in seen:
                missing.append(f"{where}: {metric} is not on /hub/metrics")
            elif not labels <= seen[metric]:
                missing.append(f"{where}: {metric} has no label(s) {sorted(labels - seen[metric])}")
        unlabelled = legend_labels(legend) - set().union(*(seen.get(m, set()) for m in found))
        if unlabelled:
            missing.append(f"{where}: its legend names {sorted(unlabelled)}, which none of {sorted(found)} has")
    assert not missing, "\n".join(missing)
    # The check saw the stop it waited for, under its reason.
    assert "reason" in seen["gpuhub_servers_culled_total"] and "user" in seen["gpuhub_device_activity_percent"]
