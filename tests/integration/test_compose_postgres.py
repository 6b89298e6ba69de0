"""The compose deployment with GPUHUB_DATABASE=postgres, and `make backup` / `make restore` on it.

PostgreSQL runs from gpuhub's own image, built from Debian's packages (images/postgres; here on the
offline base, as no registry answers). What is checked is read from PostgreSQL itself and from the
engine: the hub's tables and usage records are in the database, the hub finds every lease again after
a SIGKILL, and a backup taken while a server runs restores on an emptied engine (a fresh host: no
containers, no volumes) to the same bytes in every home and course volume and the same database.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from harness.compose import DATA_VOLUME, HUB_CONTAINER, POSTGRES_VOLUME, Deployment, engine_view, standin_gpus

from . import compose_support
from .compose_support import require_nvidia_device_requests, up_or_skip

GPUS = standin_gpus(2)
users = compose_support.users  # fixture


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, docker_client, test_image):
    require_nvidia_device_requests(docker_client, test_image, GPUS[0])
    d = up_or_skip(Deployment(tmp_path_factory.mktemp("postgres"), test_image, GPUS, {"GPUHUB_DATABASE": "postgres"}))
    yield d
    d.down()


def postgres_container(deployment) -> str:
    (found,) = deployment.client.containers.list(
        filters={"label": ["com.docker.compose.project=gpuhubtest", "com.docker.compose.service=postgres"]}
    )
    return found.id


def psql(deployment, query: str) -> list[str]:
    """Rows of `query`, as the database's owner, through psql in the postgres container."""
    out = subprocess.run(
        [
            "docker", "exec", postgres_container(deployment), "sh", "-c",
            'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -At -c "$0"',
            query,
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.splitlines()


def volume_files(volume: str) -> dict[str, str]:
    """path -> 'sha256 uid mode' for every file and folder in a Docker volume, read by a throwaway container."""
    script = "cd /v && find . -type f -exec sha256sum {} + | sed 's|  \\./| |' ; find . -printf 'meta %p %U %m\\n'"
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/v:ro", "--entrypoint", "sh",
         "gpuhub/hub:latest", "-c", script],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    files: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("meta "):
            _, path, uid, mode = line.split(" ")
            files[path.removeprefix("./")] = files.get(path.removeprefix("./"), "") + f" {uid} {mode}"
        else:
            digest, path = line.split(" ", 1)
            files[path] = digest
    return files


def test_postgres_holds_the_hub_state_leases_survive_a_hub_kill_and_usage_is_recorded_there(
    deployment, docker_client, users
):
    pg = postgres_container(deployment)
    package = subprocess.run(
        ["docker", "exec", pg, "dpkg-query", "-W", "-f", "${Version}", "postgresql-15"],
        capture_output=True,
        text=True,
    )
    assert package.returncode == 0 and "deb12" in package.stdout, f"not Debian's postgresql-15: {package}"
    gpu, cpu = users(2)
    deployment.start_all({gpu: "gpu", cpu: "cpu"})
    assert {gpu, cpu} <= set(psql(deployment, "select name from users"))
    assert "jupyterhub.sqlite" not in volume_files(DATA_VOLUME), "the hub wrote a SQLite database too"

    mine = {cid: held for cid, held in engine_view(docker_client).items() if held.user in (gpu, cpu)}
    killed_at = deployment.kill_hub()
    deadline = time.monotonic() + 90
    while not deployment.recovered({(gpu, ""), (cpu, "")}, devices_held=1):
        assert time.monotonic() < deadline, deployment.hub_log(since=killed_at)[-3000:]
        time.sleep(0.3)
    now = engine_view(docker_client)
    assert {cid: now.get(cid) for cid in mine} == mine, "a server was restarted or lost its device"

    deployment.stop_server(gpu)
    rows = psql(deployment, f'select device, reason, "end" is not null from gpuhub_usage where "user" = \'{gpu}\'')
    assert rows in ([f"{device}|admin|t"] for device in GPUS), rows  # stopped through the API by the admin
    r = deployment.api("GET", "/gpuhub/usage", params={"by": "user", "user": gpu})
    assert r.status_code == 200 and gpu in r.text, r.text

    # Only the hub reaches the database: a user container can neither name nor route to it.
    (container,) = docker_client.containers.list(filters={"label": f"gpuhub.user={cpu}"})
    pg_ip = next(iter(docker_client.api.inspect_container(pg)["NetworkSettings"]["Networks"].values()))["IPAddress"]
    probe = (
        "import socket, sys\n"
        "for host in sys.argv[1:]:\n"
        "    try:\n"
        "        socket.create_connection((host, 5432), timeout=3); print('reached', host)\n"
        "    except OSError as e:\n"
        "        print('refused', host, type(e).__name__)\n"
    )
    out = container.exec_run(["python3", "-c", probe, "postgres", pg_ip]).output.decode()
    assert "reached" not in out and out.count("refused") == 2, out


def test_a_backup_taken_while_a_server_runs_restores_on_an_empty_engine_with_every_byte_and_the_database(
    deployment, docker_client, users, tmp_path, request
):
    running, stopped = users(2)
    deployment.start_all({running: "gpu", stopped: "cpu"})
    auth = {u: deployment.user_token(u) for u in (running, stopped)}
    sums = {u: deployment.put_file(u, auth[u], "kept.bin") for u in (running, stopped)}
    deployment.put_file(running, auth[running], "big.bin", size=8 << 20)
    deployment.stop_server(stopped)
    course = f"gpuhub-course-{running.replace('gpuhubt-dc', 'bk')}"
    request.addfinalizer(lambda: subprocess.run(["docker", "volume", "rm", "-f", course], capture_output=True))
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{course}:/c", "--entrypoint", "sh", "gpuhub/hub:latest",
         "-c", "mkdir -p /c/week1 && head -c 300000 /dev/urandom > /c/week1/lab.ipynb && chown -R 1000:100 /c"],
        check=True, capture_output=True,
    )  # fmt: skip
    volumes = [f"jupyterhub-user-{running}", f"jupyterhub-user-{stopped}", course]
    before = {v: volume_files(v) for v in volumes}
    assert before[volumes[0]]["kept.bin"].split()[0] == sums[running]
    users_before = set(psql(deployment, "select name from users"))
    usage_before = psql(deployment, 'select lease_id, device, "user", reason from gpuhub_usage order by id')
    (server,) = [c for c, h in engine_view(docker_client).items() if h.user == running]
    started_at = engine_view(docker_client)[server].started_at

    backups = tmp_path / "backups"
    match = f"jupyterhub-user-({re.escape(running)}|{re.escape(stopped)})|{re.escape(course)}"  # whole names
    took = time.monotonic()
    deployment.make("backup", timeout=600, args=(f"BACKUP_DIR={backups}", f"MATCH={match}"))
    took = time.monotonic() - took
    (archive,) = backups.glob("gpuhub-*.tar")
    print(f"make backup: {archive.stat().st_size / 1e6:.1f} MB in {took:.1f} s")
    assert re.fullmatch(r"gpuhub-\d{8}T\d{6}Z\.tar", archive.name), archive.name
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    # The server was not stopped for it.
    assert engine_view(docker_client)[server].started_at == started_at
    assert deployment.file_sum(running, auth[running], "kept.bin") == sums[running]

    # While the hub runs, restore refuses in one line; a damaged archive is refused before anything is written.
    refused = deployment.make("restore", timeout=120, check=False, args=(f"BACKUP={archive}",))
    assert refused.returncode != 0 and "the hub is running" in deployment.log_tail(3)
    damaged = tmp_path / "damaged.tar"
    shutil.copy(archive, damaged)
    with open(damaged, "r+b") as f:
        f.seek(os.path.getsize(damaged) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))

    # A fresh host: nothing of gpuhub's on the engine but the images (and the settings file).
    deployment.make("down", timeout=180)
    deployment._remove_user_containers()
    for volume in [*volumes, DATA_VOLUME, POSTGRES_VOLUME]:
        subprocess.run(["docker", "volume", "rm", "-f", volume], check=True, capture_output=True)
    refused = deployment.make("restore", timeout=300, check=False, args=(f"BACKUP={damaged}",))
    assert refused.returncode != 0 and "is damaged" in deployment.log_tail(3), deployment.log_tail(5)
    assert not set(volumes) & set(v.name for v in docker_client.volumes.list()), "a damaged archive wrote volumes"

    deployment.make("restore", timeout=600, args=(f"BACKUP={archive}",))
    deployment.make("up", timeout=600)
    assert docker_client.containers.get(HUB_CONTAINER).attrs["State"]["Running"]
    for volume in volumes:
        assert volume_files(volume) == before[volume], f"{volume} differs after the round trip"
    assert set(psql(deployment, "select name from users")) == users_before
    after = psql(deployment, 'select lease_id, device, "user", reason from gpuhub_usage order by id')
    for was, now in zip(usage_before, after, strict=False):
        # A lease open at the backup is ended now: its server's container is not on this engine.
        assert was == now or (was.endswith("|") and now.startswith(was) and now != was), (was, now)
    assert len(after) >= len(usage_before)
    # The admin's API token lives in the restored database; the students' homes come back through their servers.
    deployment.start_all({running: "gpu", stopped: "cpu"})
    for user in (running, stopped):
        assert deployment.file_sum(user, auth[user], "kept.bin") == sums[user], f"{user}'s file changed"
