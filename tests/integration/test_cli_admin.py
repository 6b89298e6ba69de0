"""The `gpuhub` command against a real hub: the GPU map, the queue, quotas, usage, stop, and
`ssh-config --add-key` followed by a real OpenSSH login.

One `oidc`-mode hub for the module (lab-admin is a real identity's role, given through the
`lab-admins` group), stand-in GPUs (the NVML stand-in in the hub process, the stand-in NVIDIA
hook at dockerd) and one notebook container: ann's named GPU server `train`. The CLI runs as a
subprocess with a lab admin's or a student's token. Every refusal is checked to be one line on
stderr, non-zero, with nothing changed (read back from the hub, Docker or the container).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness.hub import TEST_HUB_ID
from spawner.container import LABEL_DEVICES, LABEL_HUB, LABEL_SERVER, LABEL_USER

from .denials import DENIED
from .oidc import oidc_hub
from .test_ssh import websocat

STANDIN = Path(__file__).resolve().parents[1] / "hardware" / "nvml_standin"
WHOLE = "GPU-c1100000-0000-0000-0000-000000000000"
MIG_PARENT = "GPU-c1100000-0000-0000-0000-000000000001"
SLICES = [f"MIG-c1100000-0000-0000-0000-0000000000a{i}" for i in range(2)]
MODEL = "NVIDIA H100 80GB HBM3"
UTILIZATION, MEMORY_USED_MIB, MEMORY_MIB = 37, 1490, 81559
LAYOUT = {
    "gpus": [
        {
            "uuid": WHOLE,
            "name": MODEL,
            "memory_mib": MEMORY_MIB,
            "mig": "disabled",
            "utilization": UTILIZATION,
            "memory_used_mib": MEMORY_USED_MIB,
            "gpm": "NotSupported",
        },
        {
            "uuid": MIG_PARENT,
            "name": MODEL,
            "memory_mib": MEMORY_MIB,
            "gpm": "NotSupported",
            "mig": [
                {"uuid": u, "name": f"{MODEL} MIG 1g.10gb", "memory_mib": 9856, "slices": 1, "memory_used_mib": 12}
                for u in SLICES
            ],
            "profiles": [["1g.10gb", 1, 9856]],
        },
    ]
}
STUDENTS = {"profiles": ["cpu", "gpu", "mig"], "max_devices_per_user": 1}
GPU_CONFIG = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "default": True},
        {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}},
        {"slug": "mig", "display_name": "1 MIG slice", "gpu": {"count": 1, "mig_profile": "1g.10gb"}},
    ],
    "quota": {"default": {"profiles": ["cpu"]}, "groups": {"students": STUDENTS}},
}
ADMIN, ANN, BOB, CY = "gpuhubt-cliadm", "gpuhubt-cliann", "gpuhubt-clibob", "gpuhubt-clicy"
SERVER = "train"  # ann's named GPU server: the module's one notebook container


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_image, test_network, chp_on_path, docker_client):
    workdir = tmp_path_factory.mktemp("cli")
    (workdir / "gpus.json").write_text(json.dumps(GPU_CONFIG))
    (workdir / "nvml.json").write_text(json.dumps(LAYOUT))
    hub, provider = oidc_hub(workdir, test_image)
    hub.env.update(
        {
            "GPUHUB_GPU_CONFIG": str(workdir / "gpus.json"),
            "GPUHUB_FAKE_NVML": str(workdir / "nvml.json"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(STANDIN), os.environ.get("PYTHONPATH", "")) if p),
            "GPUHUB_TELEMETRY_INTERVAL": "1",
            "GPUHUB_MEM_LIMIT": "1G",
        }
    )
    try:
        hub.start()
        hub.api("POST", "/users", json={"usernames": [ADMIN, ANN, BOB, CY]})
        assert hub.api("POST", "/groups/lab-admins/users", json={"users": [ADMIN]}).ok
        assert hub.api("POST", "/groups/students", json={"users": [ANN, BOB, CY]}).status_code in (201, 409)
        assert hub.api("POST", "/groups/students/users", json={"users": [ANN, BOB, CY]}).ok
        hub.tokens = {user: token_for(hub, user) for user in (ADMIN, ANN, BOB)}
        assert hub.start_server(ANN, SERVER, options={"profile": "gpu"}).status_code in (201, 202)
        hub.wait_ready(ANN, SERVER)
        hub.ann_ready_at = time.time()
        yield hub
    finally:
        hub.stop()
        provider.stop()


def token_for(hub, user: str) -> str:
    r = hub.api("POST", f"/users/{user}/tokens", json={"note": "cli test", "expires_in": 3600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def gpuhub(hub, as_user: str, *args: str) -> subprocess.CompletedProcess:
    env = {"GPUHUB_URL": hub.url, "GPUHUB_TOKEN": hub.tokens[as_user], "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "spawner.cli", *args], capture_output=True, text=True, env=env, timeout=180
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess, words: str, what: str = "") -> None:
    """Non-zero, one line on stderr naming the problem, nothing on stdout."""
    assert result.returncode != 0, result.stdout
    assert result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("gpuhub: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr, result.stderr
    if what:
        DENIED.append(f"{what} -> {result.stderr.strip()[:90]}")


def rows_of(text: str, first: str) -> list[list[str]]:
    """The table's lines as cells (two or more spaces apart), from its header line on."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first + " "))
    return [[c for c in re.split(r" {2,}", line.strip())] for line in lines[start:] if line.strip()]


def api_json(hub, path: str, as_token: str | None = None, **params):
    headers = {"Authorization": f"token {as_token}"} if as_token else {}
    r = hub.api("GET", path, params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def quota_property(hub) -> dict | None:
    return (hub.api("GET", "/groups/students").json().get("properties") or {}).get("gpuhub")


def container_of(docker_client, user: str, server: str):
    found = docker_client.containers.list(
        filters={"label": [f"{LABEL_HUB}={TEST_HUB_ID}", f"{LABEL_USER}={user}", f"{LABEL_SERVER}={server}"]}
    )
    return found[0] if found else None


def wait_until(what, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- the GPU map -------------------------------------------------------------------------------------


def test_the_gpu_map_shows_each_device_under_its_gpu_with_its_holder_and_live_figures(lab, docker_client):
    held = container_of(docker_client, ANN, SERVER).labels[LABEL_DEVICES]
    assert held == WHOLE  # from Docker: the one whole GPU went to ann's server

    def ann_row_has_telemetry():
        rows = rows_of(ok(gpuhub(lab, ADMIN, "gpus")), "GPU")
        return rows if any(WHOLE in r and f"{UTILIZATION}%" in r for r in rows) else None

    rows = wait_until("a telemetry sample in the GPU map", ann_row_has_telemetry, 20)
    assert rows[0][:4] == ["GPU", "MODEL", "DEVICE", "KIND"]
    ann = next(r for r in rows if WHOLE in r)
    memory = f"{MEMORY_USED_MIB / 1024:.1f}/{MEMORY_MIB / 1024:.1f} GiB"
    assert ann[1:] == [MODEL, WHOLE, "gpu", f"{ANN}/{SERVER}", "gpu", ann[6], f"{UTILIZATION}%", memory], ann
    assert ann[6].endswith("ago")
    # The MIG GPU's two slices are listed under it, free; a slice has no activity figure of its own.
    slices = [r for r in rows if any(u in r for u in SLICES)]
    assert len(slices) == 2 and all("free" in r and "1g.10gb" in r and "n/a" in r for r in slices), slices
    assert all("no activity figure" in r[-1] for r in slices), slices

    # --json is the hub's document as it is.
    doc = json.loads(ok(gpuhub(lab, ADMIN, "gpus", "--json")))
    api = api_json(lab, "/gpuhub/devices", lab.tokens[ADMIN])
    assert [[d["uuid"] for d in g["devices"]] for g in doc["gpus"]] == [
        [d["uuid"] for d in g["devices"]] for g in api["gpus"]
    ]
    by_uuid = {d["uuid"]: d for g in doc["gpus"] for d in g["devices"]}
    assert by_uuid[WHOLE]["holder"]["user"] == ANN and by_uuid[WHOLE]["holder"]["server"] == SERVER

    refused(gpuhub(lab, ANN, "gpus"), "not allowed", "student -> gpuhub gpus")
    refused(gpuhub(lab, ADMIN, "gpus", "lift", "not-a-uuid"), "is not a device UUID")
    refused(gpuhub(lab, ADMIN, "gpus", "lift", SLICES[0]), "quarantine")  # 409: nothing to lift
    refused(gpuhub(lab, ANN, "gpus", "lift", SLICES[0]), "not allowed", "student -> gpuhub gpus lift")


# --- the queue -------------------------------------------------------------------------------------


def queue_users(hub) -> list[str]:
    return [e["user"] for e in api_json(hub, "/gpuhub/queue", hub.tokens[ADMIN])["queue"]]


def test_a_lab_admin_sees_who_waits_and_removes_a_waiter_whose_start_then_fails(lab):
    assert "nobody is waiting" in ok(gpuhub(lab, ADMIN, "queue"))
    r = lab.start_server(BOB, options={"profile": "gpu"})  # ann holds the only whole GPU
    assert r.status_code == 202, r.text
    wait_until("bob in the queue", lambda: BOB in queue_users(lab), 20)

    rows = rows_of(ok(gpuhub(lab, ADMIN, "queue")), "POS")
    assert rows[0] == ["POS", "USER", "SERVER", "WANTS", "CHARGED TO", "PRIORITY", "WAITING"]
    assert rows[1][:6] == ["1", BOB, "-", "1 x GPU", "students", "0"], rows
    entry = json.loads(ok(gpuhub(lab, ADMIN, "queue", "--json")))["queue"][0]
    assert entry["user"] == BOB and entry["position"] == 1

    refused(gpuhub(lab, ANN, "queue"), "not allowed", "student -> gpuhub queue")
    refused(gpuhub(lab, ANN, "queue", "remove", BOB), "not allowed", "student -> gpuhub queue remove")
    refused(gpuhub(lab, ADMIN, "queue", "remove", CY), "")  # not waiting: 404, one line
    refused(gpuhub(lab, ADMIN, "queue", "remove", "Not/A/User"), "not a valid")
    assert queue_users(lab) == [BOB]  # all of that changed nothing

    assert f"removed {BOB}'s server from the GPU queue" in ok(gpuhub(lab, ADMIN, "queue", "remove", BOB))
    events = lab.progress(BOB, timeout=60)
    assert events[-1].get("failed") and "removed from the GPU queue" in events[-1]["message"], events[-3:]
    assert queue_users(lab) == [] and "nobody is waiting" in ok(gpuhub(lab, ADMIN, "queue"))


# --- quotas ----------------------------------------------------------------------------------------


def test_a_quota_set_with_the_cli_rules_each_members_next_start(lab):
    shown = rows_of(ok(gpuhub(lab, ADMIN, "quota", "show")), "GROUP")
    students = next(r for r in shown if r[0] == "students")
    assert students[2:4] == ["cpu,gpu,mig", "1"], students  # from c.GPUQuota.groups

    out = ok(gpuhub(lab, ADMIN, "quota", "set", "students", "profiles=cpu,mig", "priority=7"))
    assert "profiles - -> cpu,mig" in out and "priority - -> 7" in out
    assert quota_property(lab) == {"profiles": ["cpu", "mig"], "priority": 7}
    r = lab.start_server(CY, options={"profile": "gpu"})
    assert r.status_code == 403 and "'gpu'" in r.json()["message"], r.text

    # Unset profiles (the config's list applies again): cy's start passes, and waits at priority 7.
    assert "profiles cpu,mig -> -" in ok(gpuhub(lab, ADMIN, "quota", "set", "students", "profiles="))
    assert quota_property(lab) == {"priority": 7}
    assert lab.start_server(CY, options={"profile": "gpu"}).status_code in (201, 202)  # 201: "slow to start"
    wait_until("cy in the queue", lambda: queue_users(lab) == [CY], 20)
    entry = api_json(lab, "/gpuhub/queue", lab.tokens[ADMIN])["queue"][0]
    assert (entry["charged_to"], entry["priority"]) == ("students", 7)
    ok(gpuhub(lab, ADMIN, "queue", "remove", CY))
    lab.progress(CY, timeout=60)

    detail = ok(gpuhub(lab, ADMIN, "quota", "show", "students"))
    priority = next(line for line in detail.splitlines() if line.startswith("priority"))
    assert priority.split() == ["priority", "7", "7", "-"]  # effective, set at runtime, config
    assert "recent changes:" in detail and f"{ADMIN}  profiles cpu,mig -> -" in detail, detail
    assert "no change" in ok(gpuhub(lab, ADMIN, "quota", "set", "students", "priority=7"))
    ok(gpuhub(lab, ADMIN, "quota", "set", "students", "priority="))
    assert quota_property(lab) in (None, {})


@pytest.mark.parametrize(
    "who, args, words",
    [
        (ADMIN, ["students", "max_devices_per_user=many"], "max_devices_per_user"),
        (ADMIN, ["students", "colour=blue"], "colour"),
        (ADMIN, ["students", "gpu_hours_per_user=20/fortnight"], "gpu_hours_per_user"),
        (ADMIN, ["students", "priority=5000"], "priority"),
        (ADMIN, ["students", "priority"], "'priority' is not key=value"),
        (ADMIN, ["students"], "at least one key=value"),
        (ADMIN, ["gpuhubt-no-such-group", "priority=1"], "gpuhubt-no-such-group"),
        (ANN, ["students", "max_devices_per_user=8"], "not allowed"),
    ],
)
def test_a_bad_quota_edit_is_refused_in_one_line_and_changes_nothing(lab, who, args, words):
    ok(gpuhub(lab, ADMIN, "quota", "set", "students", "max_devices_per_user=1"))
    before = lab.api("GET", "/groups/students").json()["properties"]
    audit_before = api_json(lab, "/gpuhub/audit", lab.tokens[ADMIN], group="students")["entries"]
    refused(gpuhub(lab, who, "quota", "set", *args), words, "student -> gpuhub quota set" if who == ANN else "")
    assert lab.api("GET", "/groups/students").json()["properties"] == before
    assert api_json(lab, "/gpuhub/audit", lab.tokens[ADMIN], group="students")["entries"] == audit_before
    assert lab.api("GET", "/groups/gpuhubt-no-such-group").status_code == 404


def test_quota_show_of_an_unknown_group_is_one_line(lab):
    refused(gpuhub(lab, ADMIN, "quota", "show", "gpuhubt-no-such-group"), "unknown group 'gpuhubt-no-such-group'")
    refused(gpuhub(lab, ANN, "quota", "show"), "not allowed", "student -> gpuhub quota show")


# --- usage -----------------------------------------------------------------------------------------


def test_usage_reports_gpu_hours_as_a_table_csv_or_json_equal_to_the_hubs(lab):
    # A closed window that ann's lease started in: its figure no longer moves.
    until = lab.ann_ready_at + 2
    time.sleep(max(0.0, until - time.time()) + 0.5)
    window = ["--since", iso(until - 3600), "--until", iso(until)]
    api = api_json(
        lab, "/gpuhub/usage", lab.tokens[ADMIN], since=iso(until - 3600), until=iso(until), by="user", user=ANN
    )
    (row,) = api["rows"]
    assert row["key"] == ANN and row["leases"] == 1 and 0 < row["gpu_hours"] * 3600 < 60, row

    table = rows_of(ok(gpuhub(lab, ADMIN, "usage", *window, "--by", "user", "--user", ANN)), "USER")
    assert table[0] == ["USER", "GPU-HOURS", "LEASES", "BY END REASON"]
    assert table[1] == [ANN, f"{row['gpu_hours']:.2f}", "1", f"running {row['gpu_hours']:.2f}"], table
    (line,) = csv.DictReader(io.StringIO(ok(gpuhub(lab, ADMIN, "usage", *window, "--user", ANN, "--csv"))))
    assert line == {
        "user": ANN,
        "gpu_hours": str(row["gpu_hours"]),
        "leases": "1",
        "hours_running": str(row["gpu_hours"]),
    }
    as_json = json.loads(ok(gpuhub(lab, ADMIN, "usage", *window, "--by", "device", "--json")))
    assert as_json == api_json(
        lab, "/gpuhub/usage", lab.tokens[ADMIN], since=iso(until - 3600), until=iso(until), by="device"
    )
    assert [r["key"] for r in as_json["rows"]] == [WHOLE]

    refused(gpuhub(lab, ADMIN, "usage", "--since", "2026-13-01"), "2026-13-01")
    refused(gpuhub(lab, ADMIN, "usage", "--since", "7d", "--until", "8d"), "not before")
    refused(gpuhub(lab, ADMIN, "usage", "--by", "colour"), "invalid choice: 'colour'")
    refused(gpuhub(lab, ANN, "usage"), "custom:gpuhub:read-usage", "student -> gpuhub usage")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


# --- SSH in one step -----------------------------------------------------------------------------------


def in_container(docker_client, script: str) -> str:
    code, out = container_of(docker_client, ANN, SERVER).exec_run(["bash", "-c", script], user="1000:100")
    assert code == 0, out
    return out.decode()


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path.with_suffix(".pub")


def test_ssh_config_add_key_puts_the_key_in_the_running_server_and_ssh_logs_in(lab, docker_client, tmp_path):
    if not shutil.which("ssh"):
        pytest.fail("the OpenSSH client is missing (Debian package openssh-client; .ci/run installs it)")
    # A home without ~/.ssh: --add-key creates it. (The server made its sshd host key there at its
    # start; it is put back below, as sshd needs it.)
    in_container(docker_client, "rm -rf /tmp/ssh-before && mv ~/.ssh /tmp/ssh-before")
    first, second = keygen(tmp_path / "laptop"), keygen(tmp_path / "desktop")
    add = ["ssh-config", "--server", SERVER, "--host", "gpuhub", "--add-key"]

    r = gpuhub(lab, ANN, *add, str(first))
    assert r.returncode == 0 and "added your ssh-ed25519 key" in r.stderr, r.stderr
    keys = "cat ~/.ssh/authorized_keys"
    assert in_container(docker_client, keys) == first.read_text()
    in_container(docker_client, "cp -p /tmp/ssh-before/jupyter_sshd_hostkey* ~/.ssh/")
    # sshd (StrictModes) ignores keys that others may write: neither the file nor ~/.ssh may be.
    modes = in_container(docker_client, "stat -c %a ~ ~/.ssh ~/.ssh/authorized_keys").split()
    assert all(int(m, 8) & 0o022 == 0 for m in modes), modes

    # A key added by hand stays; the second key is appended once, however often it is given.
    in_container(docker_client, "echo 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ hand@added' >> ~/.ssh/authorized_keys")
    before = in_container(docker_client, keys)
    r = gpuhub(lab, ANN, *add, str(second))
    assert r.returncode == 0, r.stderr
    config_block = r.stdout
    assert in_container(docker_client, keys) == before + second.read_text()
    r = gpuhub(lab, ANN, *add, str(second))
    assert r.returncode == 0 and "already" in r.stderr, r.stderr
    assert in_container(docker_client, keys) == before + second.read_text()

    config = tmp_path / "ssh_config"
    config.write_text(
        config_block.replace("ProxyCommand websocat", f"ProxyCommand {websocat()}")
        + f"\n    IdentityFile {second.with_suffix('')}\n    IdentitiesOnly yes\n    BatchMode yes\n"
        + f"    StrictHostKeyChecking accept-new\n    UserKnownHostsFile {tmp_path / 'known_hosts'}\n"
    )
    login = subprocess.run(
        ["ssh", "-F", str(config), "gpuhub", "id -u; hostname"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GPUHUB_TOKEN": lab.tokens[ANN]},
    )
    assert login.returncode == 0, login.stderr
    assert login.stdout.split()[0] == "1000"

    # Refused in one line, the file untouched: a private key, two keys, a server that is not running.
    after = in_container(docker_client, keys)
    refused(gpuhub(lab, ANN, *add, str(second.with_suffix(""))), "private key")
    (tmp_path / "two.pub").write_text(first.read_text() + second.read_text())
    refused(gpuhub(lab, ANN, *add, str(tmp_path / "two.pub")), "exactly one public key line")
    refused(gpuhub(lab, ANN, *add, str(tmp_path / "missing.pub")), "cannot read")
    refused(gpuhub(lab, ANN, "ssh-config", "--add-key", str(first)), "not running")  # ann's default server
    refused(gpuhub(lab, BOB, "ssh-config", "--add-key", str(first)), "not running")
    assert in_container(docker_client, keys) == after


# --- stop ----------------------------------------------------------------------------------------------


def test_stop_ends_a_users_server_and_its_usage_record_says_a_lab_admin_did(lab, docker_client):
    # JupyterHub answers 404 for a server the token may not see (it does not tell it exists).
    refused(gpuhub(lab, BOB, "stop", f"{ANN}/{SERVER}"), "has no running server", "student -> stop another's server")
    refused(gpuhub(lab, ADMIN, "stop", f"{ANN}/nope"), f"{ANN} has no running server named 'nope'")
    refused(gpuhub(lab, ADMIN, "stop", "gpuhubt-nobody"), "gpuhubt-nobody has no running server")
    assert container_of(docker_client, ANN, SERVER) is not None  # still running after all of that

    out = ok(gpuhub(lab, ADMIN, "stop", f"{ANN}/{SERVER}"))
    assert out.strip() == f"stopped {ANN}'s server '{SERVER}' (its files are kept)"
    assert container_of(docker_client, ANN, SERVER) is None
    assert SERVER not in lab.user_model(ANN)["servers"]
    rows = rows_of(ok(gpuhub(lab, ADMIN, "gpus")), "GPU")
    assert "free" in next(r for r in rows if WHOLE in r)
    reasons = {r["key"] for r in api_json(lab, "/gpuhub/usage", lab.tokens[ADMIN], by="reason", user=ANN)["rows"]}
    assert reasons == {"admin"}, reasons
    refused(gpuhub(lab, ADMIN, "stop", f"{ANN}/{SERVER}"), "has no running server named 'train'")
