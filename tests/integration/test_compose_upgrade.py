"""`make upgrade` with users on: from the previous commit's images to this commit's.

The deployment starts on the hub image built from the previous commit (a git worktree of HEAD~1, or
GPUHUB_UPGRADE_FROM), with servers running and files in homes; then the notebook image is replaced
(as an admin who rebuilt or pulled it) and `make upgrade` rebuilds the hub image from this tree,
backs up the database, migrates it and restarts the hub. Judged from the engine: the same user
containers keep running with the same devices, the hub lists them, the new hub image runs, each
user's next start gets the new notebook image with their home intact.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import threading
import time

import pytest
import requests

from harness.compose import ROOT, Deployment, engine_view, holders, standin_gpus

from . import compose_support
from .compose_support import require_nvidia_device_requests, up_or_skip

GPUS = standin_gpus(2)
HUB_TAG = "gpuhub/hub:upgrade-test"
NOTEBOOK_TAG = "gpuhub/notebook:upgrade-test"
users = compose_support.users  # fixture


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


class Outage:
    """The longest stretch during which the hub (/hub/health) or a user's server (through the proxy) did not answer."""

    def __init__(self, deployment, user: str, auth: dict[str, str]):
        self.urls = {
            "hub": (f"{deployment.url}/hub/health", {}),
            "user": (f"{deployment.url}/user/{user}/api/status", auth),
        }
        self.longest = self.longest_user = 0.0
        self._stop = threading.Event()

    def _watch(self) -> None:
        down: dict[str, float | None] = {"hub": None, "user": None}
        while not self._stop.is_set():
            for name, (url, headers) in self.urls.items():
                try:
                    ok = requests.get(url, headers=headers, timeout=1).status_code == 200
                except requests.RequestException:
                    ok = False
                now = time.monotonic()
                if not ok and down[name] is None:
                    down[name] = now
                elif ok and down[name] is not None:
                    took = now - down[name]
                    down[name] = None
                    if name == "hub":
                        self.longest = max(self.longest, took)
                    else:
                        self.longest_user = max(self.longest_user, took)
            time.sleep(0.1)

    def __enter__(self) -> Outage:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(2)  # the last outage ends after make returns (wait-and-greet sees the hub first)
        self._stop.set()
        self._thread.join()


def image_id(name: str) -> str:
    return subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", name], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def previous_hub_image(tmp_path_factory):
    """The hub image of the previous commit, built by that commit's own Makefile, tagged HUB_TAG."""
    ref = os.environ.get("GPUHUB_UPGRADE_FROM", "HEAD~1")
    try:
        commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        pytest.fail(f"{ref} is not in this clone (a shallow clone?): the upgrade test needs the previous commit")
    tree = tmp_path_factory.mktemp("previous") / "tree"
    git("worktree", "add", "--detach", str(tree), commit)
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        build = subprocess.run(
            ["make", "hub-image", f"HUB_IMAGE={HUB_TAG}"], cwd=tree, env=env, capture_output=True, text=True
        )
        assert build.returncode == 0, f"building {commit[:12]}'s hub image failed:\n{build.stdout}\n{build.stderr}"
    finally:
        git("worktree", "remove", "--force", str(tree))
    return commit, image_id(HUB_TAG)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, docker_client, test_image, previous_hub_image):
    require_nvidia_device_requests(docker_client, test_image, GPUS[0])
    subprocess.run(["docker", "tag", test_image, NOTEBOOK_TAG], check=True)
    d = Deployment(
        tmp_path_factory.mktemp("upgrade"),
        NOTEBOOK_TAG,
        GPUS,
        {"GPUHUB_HUB_IMAGE": HUB_TAG},
    )
    # `make up` builds HUB_IMAGE, which follows the settings file: here it must not replace the previous image.
    yield up_or_skip(d, make_args=("HUB_IMAGE=gpuhub/hub:latest",))
    d.down()
    subprocess.run(["docker", "image", "rm", "-f", HUB_TAG, NOTEBOOK_TAG], capture_output=True)


def test_make_upgrade_keeps_running_servers_and_their_devices_and_new_starts_get_the_new_notebook_image(
    deployment, docker_client, users, previous_hub_image, test_image, tmp_path
):
    commit, old_hub = previous_hub_image
    hub = docker_client.containers.get("gpuhub-hub")
    assert hub.image.id == old_hub, "the deployment does not run the previous commit's hub image"
    gpu, cpu = users(2)
    deployment.start_all({gpu: "gpu", cpu: "cpu"})
    auth = {u: deployment.user_token(u) for u in (gpu, cpu)}
    sums = {u: deployment.put_file(u, auth[u], "kept.bin") for u in (gpu, cpu)}
    before = engine_view(docker_client)
    mine = {cid: held for cid, held in before.items() if held.user in (gpu, cpu)}
    old_notebook = image_id(NOTEBOOK_TAG)

    # The admin has a new notebook image (rebuilt or pulled under the same name).
    new_notebook = subprocess.run(
        ["docker", "build", "-q", "-t", NOTEBOOK_TAG, "-"],
        input=f"FROM {test_image}\nLABEL gpuhub.test.generation=new\n",
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert new_notebook != old_notebook

    # Relative to the checkout, as `make upgrade`'s default backups/ is.
    relative = f".build/upgrade-test-backups-{gpu}"
    backups = ROOT / relative
    started = time.monotonic()
    try:
        with Outage(deployment, gpu, auth[gpu]) as outage:
            deployment.make("upgrade", timeout=900, args=(f"BACKUP_DIR={relative}",))
        (archive,) = backups.glob("gpuhub-*-database.tar")
        shutil.copy(archive, tmp_path / archive.name)
        archive = tmp_path / archive.name
    finally:
        shutil.rmtree(backups, ignore_errors=True)
    print(
        f"make upgrade from {commit[:12]} took {time.monotonic() - started:.1f} s; the hub did not answer for"
        f" {outage.longest:.1f} s, {gpu}'s server through the proxy for {outage.longest_user:.1f} s"
    )

    assert outage.longest < 60 and outage.longest_user < 60, "the upgrade kept the hub away for over a minute"
    # The new hub runs this tree's image.
    hub = docker_client.containers.get("gpuhub-hub")
    assert hub.image.id == image_id(HUB_TAG), "the hub does not run the image make upgrade built"
    assert hub.attrs["State"]["Running"]
    # The servers never stopped, and hold the same devices; the hub lists them and answers for them.
    now = engine_view(docker_client)
    for cid, held in mine.items():
        assert cid in now and now[cid].started_at == held.started_at, f"{held.user}'s container was restarted"
    assert holders({c: now[c] for c in mine}) == holders(mine)
    deadline = time.monotonic() + 60
    while not deployment.recovered({(gpu, ""), (cpu, "")}, devices_held=1):
        assert time.monotonic() < deadline, deployment.hub_log(tail=40)
        time.sleep(0.5)
    for user in (gpu, cpu):
        assert deployment.file_sum(user, auth[user], "kept.bin") == sums[user]
        assert docker_client.containers.get(next(c for c, h in mine.items() if h.user == user)).image.id == old_notebook

    # The database was backed up before the migration: a snapshot that knows these users.
    with tarfile.open(archive) as t:
        manifest = json.load(t.extractfile("manifest.json"))
        assert [m["path"] for m in manifest["members"]] == ["database/jupyterhub.sqlite"]
        t.extract("database/jupyterhub.sqlite", tmp_path, filter="data")
    names = {
        row[0] for row in sqlite3.connect(tmp_path / "database/jupyterhub.sqlite").execute("select name from users")
    }
    assert {gpu, cpu} <= names

    # Each user's next start gets the new notebook image, with the home as it was.
    for user, profile in ((gpu, "gpu"), (cpu, "cpu")):
        deployment.stop_server(user)
        deployment.start_all({user: profile})
        (container,) = docker_client.containers.list(filters={"label": f"gpuhub.user={user}"})
        assert container.image.id == new_notebook, f"{user}'s new server runs the old notebook image"
        assert deployment.file_sum(user, auth[user], "kept.bin") == sums[user], f"{user}'s file changed"
