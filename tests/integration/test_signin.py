"""Sign-in with a real OpenID Connect provider (panva's oidc-provider on localhost) in headless
Chromium, GitHub's authorize redirect, and one-line refusals of a misconfigured provider."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from .browser import wait_for_lab
from .hub import ROOT

OIDC_DIR = ROOT / "tests" / "oidc"
USERS = {
    "alice": ["students", "course-ml101"],
    "tina": ["instructors"],
    "mallory": ["visitors"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Provider:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.client_id, self.client_secret = "gpuhub", "gpuhub-test-secret"
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self, redirect: str) -> Provider:
        if not (OIDC_DIR / "node_modules" / "oidc-provider").exists():
            pytest.fail("oidc-provider is not installed; `make dev-deps` installs it under tests/oidc/")
        env = {
            **os.environ,
            "OIDC_PORT": str(self.port),
            "OIDC_CLIENT_ID": self.client_id,
            "OIDC_CLIENT_SECRET": self.client_secret,
            "OIDC_REDIRECT": redirect,
            "OIDC_USERS": json.dumps(USERS),
        }
        log = open(self.workdir / "oidc.log", "ab")
        self.proc = subprocess.Popen(
            [shutil.which("node") or "node", str(OIDC_DIR / "provider.mjs")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(100):
            try:
                if requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError((self.workdir / "oidc.log").read_text())

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def oidc(tmp_path_factory, test_image, test_network, chp_on_path):
    """A hub in `oidc` mode against a real provider; both stopped after the module."""
    from .hub import Hub

    workdir = tmp_path_factory.mktemp("oidc")
    provider = Provider(workdir)
    hub = Hub(
        workdir,
        test_image,
        env={
            "GPUHUB_AUTH": "oidc",
            "GPUHUB_OIDC_ISSUER": provider.issuer,
            "GPUHUB_OAUTH_CLIENT_ID": provider.client_id,
            "GPUHUB_OAUTH_CLIENT_SECRET": provider.client_secret,
            "GPUHUB_OIDC_SCOPES": "openid profile email groups",
            "GPUHUB_ALLOWED_GROUPS": "students,instructors",
            "GPUHUB_ADMIN_GROUPS": "hpc-staff",
        },
    )
    hub.env["GPUHUB_PUBLIC_URL"] = hub.url
    provider.start(redirect=f"{hub.url}/hub/oauth_callback")
    hub.start()
    yield hub, provider
    hub.stop()
    provider.stop()


def sign_in_at_provider(page, hub_url: str, login: str) -> None:
    page.goto(f"{hub_url}/hub/login")
    page.get_by_text("Sign in with your institution").click()
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any-password")
    page.click("button[type=submit]")


def test_a_student_signs_in_at_the_provider_and_gets_jupyterlab_with_the_providers_groups(oidc, browser_page):
    hub, _ = oidc
    sign_in_at_provider(browser_page, hub.url, "alice")
    wait_for_lab(browser_page, "alice")
    model = hub.user_model("alice")
    assert set(model["groups"]) == {"students", "course-ml101"}
    assert model["admin"] is False
    state = hub.api("GET", "/users/alice", params={"include_stopped_servers": "1"}).json()
    assert state["name"] == "alice"
    hub.stop_server("alice")


def test_a_user_outside_the_allowed_groups_gets_a_clear_403_and_no_account(oidc, browser_page):
    hub, _ = oidc
    responses = []
    browser_page.on("response", lambda r: responses.append(r) if "/hub/oauth_callback" in r.url else None)
    sign_in_at_provider(browser_page, hub.url, "mallory")
    browser_page.wait_for_load_state()
    assert responses and responses[-1].status == 403
    text = browser_page.inner_text("body")
    assert "403" in text and "Traceback" not in text
    assert hub.api("GET", "/users/mallory").status_code == 404


def test_auth_state_key_and_cookie_secret_are_kept_private(oidc):
    hub, _ = oidc
    for name in ("jupyterhub_crypt_key", "jupyterhub_cookie_secret"):
        mode = os.stat(hub.data_dir / name).st_mode & 0o777
        assert mode == 0o600, f"{name} has mode {oct(mode)}"


def test_github_mode_builds_the_authorize_redirect(make_hub):
    hub = make_hub(
        env={
            "GPUHUB_AUTH": "github",
            "GPUHUB_PUBLIC_URL": "https://gpu.example.edu",
            "GPUHUB_OAUTH_CLIENT_ID": "Iv1.gpuhubtest",
            "GPUHUB_OAUTH_CLIENT_SECRET": "github-secret",
            "GPUHUB_ALLOWED_GROUPS": "uni-lab,uni:ml-101",
        }
    ).start()
    r = requests.get(f"{hub.url}/hub/oauth_login", allow_redirects=False, timeout=10)
    assert r.status_code == 302
    where = urlparse(r.headers["Location"])
    query = parse_qs(where.query)
    assert (where.scheme, where.netloc, where.path) == ("https", "github.com", "/login/oauth/authorize")
    assert query["client_id"] == ["Iv1.gpuhubtest"]
    assert query["redirect_uri"] == ["https://gpu.example.edu/hub/oauth_callback"]
    assert query["scope"] == ["read:org"] and query["state"][0]


@pytest.mark.parametrize(
    "env, words",
    [
        (
            {"GPUHUB_AUTH": "oidc", "GPUHUB_OIDC_ISSUER": "http://127.0.0.1:1", "GPUHUB_PUBLIC_URL": "http://h"},
            "GPUHUB_OIDC_ISSUER='http://127.0.0.1:1': cannot read",
        ),
        (
            {"GPUHUB_AUTH": "github", "GPUHUB_PUBLIC_URL": "http://h", "GPUHUB_OAUTH_CLIENT_ID": ""},
            "GPUHUB_OAUTH_CLIENT_ID is not set",
        ),
    ],
)
def test_a_misconfigured_provider_stops_the_hub_with_one_line(make_hub, env, words):
    hub = make_hub(env={"GPUHUB_OAUTH_CLIENT_ID": "x", "GPUHUB_OAUTH_CLIENT_SECRET": "y", **env})
    with pytest.raises(RuntimeError) as failure:
        hub.start(timeout=30)
    log = hub.log_path.read_text()
    errors = [line for line in log.splitlines() if line.startswith("gpuhub: configuration error:")]
    assert len(errors) == 1 and words in errors[0], log
    assert "Traceback" not in log
    assert "exited with 2" in str(failure.value)
