"""`gpuhub ssh-config [--add-key KEY.pub]`: SSH into one's own server in one step.

The ~/.ssh/config block runs OpenSSH through the hub's proxy to jupyter-sshd-proxy, over a
websocket the hub token authenticates. `--add-key` first puts the public key in the server's
`~/.ssh/authorized_keys` through the server's own Jupyter contents API (the same token), keeping
the keys there and adding none twice. The server's sshd runs with OpenSSH's defaults (StrictModes):
it ignores an authorized_keys file or ~/.ssh that others may write. The contents API creates both
with the server's umask (022 in the notebook image) and keeps an existing file's mode.
"""

from __future__ import annotations

import base64
import binascii
import struct
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from . import container
from .cli_admin import SERVER_NAME
from .cli_client import CLIError, Hub, hub_message

NOTEBOOK_ACCOUNT = PurePosixPath(container.DEFAULT_HOME_PATH).name

#: Key types the notebook image's OpenSSH (Debian bookworm, 9.2) accepts by default. DSA is off there.
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
AUTHORIZED_KEYS = ".ssh/authorized_keys"


def public_key(text: str, where: str) -> tuple[str, str, str]:
    """(type, base64 blob, comment) of the one OpenSSH public key in `text`; else one line.

    Messages never quote the file: a private key given by mistake must not end up in a terminal log.
    """
    if "PRIVATE KEY" in text:
        raise CLIError(f"{where} is a private key: give the public one ({where}.pub), and never share the private key")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise CLIError(f"{where} must hold exactly one public key line (it has {len(lines)})")
    parts = lines[0].split(None, 2)
    kind = parts[0]
    if kind == "ssh-dss":
        raise CLIError(f"{where} is a DSA key, which OpenSSH no longer accepts; make one with ssh-keygen -t ed25519")
    if kind not in KEY_TYPES:
        raise CLIError(f"{where} is not an OpenSSH public key (known types: {', '.join(KEY_TYPES)})")
    if len(parts) < 2:
        raise CLIError(f"{where}: the {kind} key has no key data")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        embedded = blob[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        raise CLIError(f"{where}: the {kind} key's data is not valid base64 key data") from None
    if embedded != kind:
        raise CLIError(f"{where}: the key data is a {embedded[:40]!r} key, not {kind}")
    return kind, parts[1], parts[2] if len(parts) > 2 else ""


def with_key(existing: str, key: tuple[str, str, str]) -> str | None:
    """authorized_keys with `key` appended, every existing line kept; None if the key is there already
    (same key data, whatever its comment or options)."""
    kind, blob, comment = key
    for line in existing.splitlines():
        if not line.lstrip().startswith("#") and blob in line.split():
            return None
    if existing and not existing.endswith("\n"):
        existing += "\n"
    return existing + " ".join(p for p in (kind, blob, comment) if p) + "\n"


def config_block(hub_url: str, user: str, server: str, alias: str) -> str:
    """An ~/.ssh/config block: OpenSSH through the proxy to the server's jupyter-sshd-proxy."""
    scheme = "wss" if hub_url.startswith("https://") else "ws"
    host = hub_url.split("://", 1)[1]
    path = f"/user/{quote(user, safe='@~')}/{quote(server, safe='@~') + '/' if server else ''}sshd/"
    alias = alias or f"gpuhub-{user}" + (f"-{server}" if server else "")
    return "\n".join(
        [
            f"Host {alias}",
            f"    User {NOTEBOOK_ACCOUNT}",
            "    # The hub token authenticates the tunnel; keep it in the environment, not in this file.",
            f'    ProxyCommand websocat --binary -H="Authorization: token ${{GPUHUB_TOKEN}}" asyncstdio: {scheme}://{host}{path}',
        ]
    )


class Contents:
    """The Jupyter contents API of one of the caller's servers, through the hub's proxy."""

    def __init__(self, hub: Hub, user: str, server: str):
        self.hub = hub
        self.base = f"{hub.url}/user/{quote(user, safe='@~')}/" + (f"{quote(server, safe='@~')}/" if server else "")
        self.server = f"your server {server!r}" if server else "your server"

    def call(self, method: str, path: str, ok=(200, 201), **kwargs):
        r = self.hub.request(method, f"{self.base}api/contents/{path}", allow_redirects=False, **kwargs)
        if r.status_code in ok:
            return r
        if 300 <= r.status_code < 400 or r.status_code in (424, 502, 503):
            raise CLIError(f"{self.server} is not running (or not ready): start it at {self.hub.url}/hub/home")
        if r.status_code == 400 and "Cannot create" in r.text:
            raise CLIError(
                f"{self.server} refuses to write hidden files such as ~/{AUTHORIZED_KEYS} "
                "(Jupyter's ContentsManager.allow_hidden is off): ask your lab admin"
            )
        if r.status_code == 403:
            raise CLIError(f"not allowed: this token may not use {self.server} ({hub_message(r)})")
        raise CLIError(f"{method} {path} in {self.server} failed: {r.status_code} {hub_message(r)}")

    def read_text(self, path: str) -> str | None:
        r = self.call("GET", path, ok=(200, 404), params={"type": "file", "format": "text", "content": "1"})
        return r.json()["content"] if r.status_code == 200 else None

    def ensure_directory(self, path: str) -> None:
        r = self.call("GET", path, ok=(200, 404), params={"type": "directory", "content": "0"})
        if r.status_code == 404:
            self.call("PUT", path, json={"type": "directory"})

    def write_text(self, path: str, text: str) -> None:
        self.call("PUT", path, json={"type": "file", "format": "text", "content": text})


def add_key(hub: Hub, user: dict, server: str, key_path: str) -> str:
    """Put the key in the server's authorized_keys; what happened, in one line."""
    path = Path(key_path).expanduser()
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise CLIError(f"cannot read {key_path}: {e.strerror or e}") from None
    key = public_key(text, str(key_path))
    servers = user.get("servers")
    if servers is not None and not (servers.get(server) or {}).get("ready"):
        which = f"your server {server!r}" if server else "your server"
        raise CLIError(f"{which} is not running: start it at {hub.url}/hub/home, then run this again")
    contents = Contents(hub, user["name"], server)
    existing = contents.read_text(AUTHORIZED_KEYS)
    updated = with_key(existing or "", key)
    if updated is None:
        return f"your {key[0]} key is in ~/{AUTHORIZED_KEYS} already"
    if existing is None:
        contents.ensure_directory(".ssh")
    contents.write_text(AUTHORIZED_KEYS, updated)
    return f"added your {key[0]} key to ~/{AUTHORIZED_KEYS} in {contents.server}"


def cmd_ssh_config(hub: Hub, a) -> str:
    if a.server and not SERVER_NAME.match(a.server):
        raise CLIError(f"{a.server!r} is not a valid server name")
    user = hub.whoami()
    if user.get("kind", "user") != "user":
        raise CLIError("ssh-config needs a user's own token (from <hub>/hub/token), not a service's")
    if a.add_key:
        # The config block goes to stdout (for >> ~/.ssh/config), what was done to stderr.
        print(f"gpuhub: {add_key(hub, user, a.server, a.add_key)}", file=sys.stderr)
    return config_block(hub.url, user["name"], a.server, a.host)


def add_parser(sub, common) -> None:
    ssh = sub.add_parser(
        "ssh-config",
        parents=[common],
        help="print an ~/.ssh/config block for your server (jupyter-sshd-proxy); --add-key installs your key",
    )
    ssh.add_argument("--server", default="", help="a named server (default: the default server)")
    ssh.add_argument("--host", default="", help="the Host alias (default: gpuhub-<user>)")
    ssh.add_argument(
        "--add-key",
        metavar="KEY.pub",
        help="first add this public key to ~/.ssh/authorized_keys in your running server",
    )
    ssh.set_defaults(func=cmd_ssh_config)
