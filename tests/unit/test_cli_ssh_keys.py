"""`gpuhub ssh-config --add-key`: which files are public keys, and authorized_keys kept intact. Pure."""

import base64
import re
import struct
import subprocess

import pytest

from spawner.cli_client import CLIError
from spawner.cli_ssh import config_block, public_key, with_key


def keygen(tmp_path, kind: str, name: str = "id") -> str:
    path = tmp_path / f"{name}_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "ann@laptop", "-f", str(path)], check=True)
    return (tmp_path / f"{name}_{kind}.pub").read_text()


@pytest.mark.parametrize("kind, expected", [("ed25519", "ssh-ed25519"), ("ecdsa", "ecdsa-sha2-nistp256")])
def test_keys_made_by_ssh_keygen_are_accepted(tmp_path, kind, expected):
    text = keygen(tmp_path, kind)
    found = public_key(text, "id.pub")
    assert found[0] == expected and found[2] == "ann@laptop"
    assert text.strip() == " ".join(found)


def fake_blob(kind: str) -> str:
    return base64.b64encode(struct.pack(">I", len(kind)) + kind.encode() + b"\0" * 32).decode()


@pytest.mark.parametrize(
    "text, words",
    [
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n",
            "private key",
        ),
        ("", "exactly one public key line (it has 0)"),
        ("ssh-ed25519 AAAA a\nssh-ed25519 AAAA b\n", "exactly one public key line (it has 2)"),
        ("hello world\n", "not an OpenSSH public key"),
        ('from="10.0.0.1" ssh-ed25519 AAAA x\n', "not an OpenSSH public key"),
        (f"ssh-dss {fake_blob('ssh-dss')} old\n", "DSA key"),
        ("ssh-ed25519\n", "has no key data"),
        ("ssh-ed25519 not*base64 x\n", "not valid base64"),
        (f"ssh-ed25519 {fake_blob('ssh-rsa')} x\n", "is a 'ssh-rsa' key, not ssh-ed25519"),
    ],
)
def test_anything_but_one_public_key_line_is_refused_without_quoting_it(text, words):
    with pytest.raises(CLIError, match=re.escape(words)) as e:
        public_key(text, "k.pub")
    assert "b3BlbnNzaC1rZXktdjE" not in str(e.value)


def test_the_key_is_appended_and_existing_keys_stay():
    key = ("ssh-ed25519", fake_blob("ssh-ed25519"), "ann@laptop")
    existing = "# work laptop\nssh-rsa AAAAother me@work"  # no final newline
    assert with_key(existing, key) == f"{existing}\nssh-ed25519 {key[1]} ann@laptop\n"
    assert with_key("", key) == f"ssh-ed25519 {key[1]} ann@laptop\n"


def test_a_key_already_there_is_not_added_twice_whatever_its_comment_or_options():
    key = ("ssh-ed25519", fake_blob("ssh-ed25519"), "new comment")
    assert with_key(f"ssh-ed25519 {key[1]} old comment\n", key) is None
    assert with_key(f'no-pty,from="10.0.0.0/8" ssh-ed25519 {key[1]}\n', key) is None
    assert with_key(f"# ssh-ed25519 {key[1]} commented out\n", key) is not None


def test_the_config_block_points_at_the_servers_sshd_through_the_proxy():
    block = config_block("https://gpu.example.edu", "ann@uni.edu", "train", "")
    assert block.splitlines()[0] == "Host gpuhub-ann@uni.edu-train"
    assert block.endswith("asyncstdio: wss://gpu.example.edu/user/ann@uni.edu/train/sshd/")
    assert "${GPUHUB_TOKEN}" in block
    assert config_block("http://127.0.0.1:8000", "ann", "", "lab").splitlines()[0] == "Host lab"
