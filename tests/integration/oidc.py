"""A real OpenID Connect provider for the tests (panva's oidc-provider, tests/oidc/) and a hub
signed into through it. Users and their provider groups are fixed here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from harness.hub import ROOT, Hub, free_port

from .browser import login_url

OIDC_DIR = ROOT / "tests" / "oidc"
USERS = {
    "gpuhubt-alice": ["students", "course-ml101"],
    "gpuhubt-hank": ["hpc-staff"],
    "gpuhubt-teach": ["instructors"],
    "gpuhubt-mallory": ["visitors"],
}


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
        self.stop()
        raise RuntimeError((self.workdir / "oidc.log").read_text())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def oidc_hub(workdir: Path, image: str) -> tuple[Hub, Provider]:
    """A started provider and a (not yet started) hub in `oidc` mode against it."""
    provider = Provider(workdir)
    hub = Hub(
        workdir,
        image,
        env={
            "GPUHUB_AUTH": "oidc",
            "GPUHUB_ADMIN_USERS": "",
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
    return hub, provider


def sign_in_at_provider(page, hub_url: str, login: str, next_path: str = "") -> None:
    page.goto(login_url(hub_url, next_path))
    page.get_by_text("Sign in with your institution").click()
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any-password")
    page.click("button[type=submit]")
