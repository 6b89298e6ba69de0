"""Sign-in with a real OpenID Connect provider (panva's oidc-provider on localhost) in headless
Chromium, and GitHub's authorize redirect. (A misconfigured provider's one-line refusals are among
test_foundation's bad settings.)"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from .browser import wait_for_lab
from .oidc import oidc_hub, sign_in_at_provider


@pytest.fixture(scope="module")
def oidc(tmp_path_factory, test_image, test_network, chp_on_path):
    """A hub in `oidc` mode against a real provider; both stopped after the module."""
    hub, provider = oidc_hub(tmp_path_factory.mktemp("oidc"), test_image)
    try:
        hub.start()
        yield hub, provider
    finally:
        hub.stop()
        provider.stop()


def test_a_student_signs_in_at_the_provider_and_gets_jupyterlab_with_the_providers_groups(oidc, browser_page):
    hub, _ = oidc
    sign_in_at_provider(browser_page, hub.url, "gpuhubt-alice")
    wait_for_lab(browser_page, "gpuhubt-alice")
    model = hub.user_model("gpuhubt-alice")
    assert set(model["groups"]) == {"students", "course-ml101"}
    assert model["admin"] is False
    hub.stop_server("gpuhubt-alice")


def test_members_of_the_admin_group_become_hub_admins(oidc, browser_page):
    hub, _ = oidc
    sign_in_at_provider(browser_page, hub.url, "gpuhubt-hank", next_path="/hub/token")
    browser_page.wait_for_url("**/hub/token")
    assert hub.user_model("gpuhubt-hank")["admin"] is True
    assert hub.user_model("gpuhubt-hank")["groups"] == ["hpc-staff"]


def test_a_user_outside_the_allowed_groups_gets_a_clear_403_and_no_account(oidc, browser_page):
    hub, _ = oidc
    responses = []
    browser_page.on("response", lambda r: responses.append(r) if "/hub/oauth_callback" in r.url else None)
    sign_in_at_provider(browser_page, hub.url, "gpuhubt-mallory")
    browser_page.wait_for_load_state()
    assert responses and responses[-1].status == 403
    text = browser_page.inner_text("body")
    assert "403" in text and "Traceback" not in text
    assert hub.api("GET", "/users/gpuhubt-mallory").status_code == 404


def test_auth_state_key_and_cookie_secret_are_kept_private(oidc):
    hub, _ = oidc
    for name in ("jupyterhub_crypt_key", "jupyterhub_cookie_secret"):
        mode = os.stat(hub.data_dir / name).st_mode & 0o777
        assert mode == 0o600, f"{name} has mode {oct(mode)}"


def test_github_mode_builds_the_authorize_redirect(make_hub):
    hub = make_hub(
        env={
            "GPUHUB_AUTH": "github",
            "GPUHUB_ADMIN_USERS": "",
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
