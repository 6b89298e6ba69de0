import http.server
import json
import os
import threading

import pytest
from traitlets.config import Config

from spawner import settings, signin

BASE = {"GPUHUB_SHARED_PASSWORD": "student-pass", "GPUHUB_ADMIN_PASSWORD": "a" * 32}
OAUTH = {
    "GPUHUB_ADMIN_USERS": "",
    "GPUHUB_PUBLIC_URL": "https://gpu.example.edu/",
    "GPUHUB_OAUTH_CLIENT_ID": "gpuhub",
    "GPUHUB_OAUTH_CLIENT_SECRET": "s3cret",
    "GPUHUB_ALLOWED_GROUPS": "students,course-ml101",
    "GPUHUB_ADMIN_GROUPS": "hpc-staff",
}


@pytest.fixture
def discovery():
    """A real HTTP server answering the discovery request (or not: path '/broken')."""
    doc = {
        "issuer": "x",
        "authorization_endpoint": "https://idp/auth",
        "token_endpoint": "https://idp/token",
        "userinfo_endpoint": "https://idp/me",
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path.startswith("/good/"):
                body = json.dumps(doc).encode()
            elif self.path.startswith("/list/"):
                body = b"[1, 2]"
            else:
                body = json.dumps({"issuer": "x"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_shared_password_mode_needs_no_oauth_settings():
    s = settings.load(BASE)
    c = Config()
    signin.configure(c, s, "/nonexistent")
    assert c.JupyterHub.authenticator_class == "shared-password"
    assert c.Authenticator.allow_all is True


@pytest.mark.parametrize("mode", ["github", "oidc"])
def test_oauth_modes_do_not_need_the_shared_passwords_but_name_what_they_miss(mode):
    with pytest.raises(
        settings.SettingsError, match=rf"^GPUHUB_PUBLIC_URL is not set \(needed for GPUHUB_AUTH={mode}\)"
    ):
        settings.load({"GPUHUB_AUTH": mode})
    env = {"GPUHUB_AUTH": mode, **OAUTH, "GPUHUB_OAUTH_CLIENT_SECRET": ""}
    with pytest.raises(settings.SettingsError, match=r"^GPUHUB_OAUTH_CLIENT_SECRET is not set"):
        settings.load(env)


def test_a_bad_public_url_or_scope_list_is_named():
    with pytest.raises(settings.SettingsError, match=r"^GPUHUB_PUBLIC_URL='gpu.example.edu' is invalid"):
        settings.load({"GPUHUB_AUTH": "github", **OAUTH, "GPUHUB_PUBLIC_URL": "gpu.example.edu"})
    env = {"GPUHUB_AUTH": "oidc", **OAUTH, "GPUHUB_OIDC_ISSUER": "https://idp", "GPUHUB_OIDC_SCOPES": "profile"}
    with pytest.raises(settings.SettingsError, match=r"^GPUHUB_OIDC_SCOPES='profile' is invalid: must include openid"):
        settings.load(env)


def test_oidc_mode_reads_the_discovery_document_and_maps_groups(discovery, tmp_path):
    s = settings.load({"GPUHUB_AUTH": "oidc", **OAUTH, "GPUHUB_OIDC_ISSUER": f"{discovery}/good"})
    c = Config()
    signin.configure(c, s, str(tmp_path))
    g = c.GenericOAuthenticator
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    assert (g.authorize_url, g.token_url, g.userdata_url) == ("https://idp/auth", "https://idp/token", "https://idp/me")
    assert g.allowed_groups == {"students", "course-ml101"} and c.OAuthenticator.admin_groups == {"hpc-staff"}
    assert g.auth_state_groups_key == "oauth_user.groups" and c.OAuthenticator.manage_groups is True
    assert c.OAuthenticator.oauth_callback_url == "https://gpu.example.edu/hub/oauth_callback"
    key = tmp_path / "jupyterhub_crypt_key"
    assert c.CryptKeeper["keys"] == [bytes.fromhex(key.read_text())] and len(c.CryptKeeper["keys"][0]) == 32
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    signin.configure(Config(), s, str(tmp_path))  # a restart keeps the key
    assert c.CryptKeeper["keys"] == [bytes.fromhex(key.read_text())]


def test_an_unusable_issuer_is_one_line_naming_the_setting(discovery):
    with pytest.raises(signin.SignInError, match=r"^GPUHUB_OIDC_ISSUER='.*/broken': .* lacks authorization_endpoint"):
        signin.discover(f"{discovery}/broken")
    with pytest.raises(signin.SignInError, match=r"^GPUHUB_OIDC_ISSUER='http://127.0.0.1:1': cannot read"):
        signin.discover("http://127.0.0.1:1", timeout=2)


def test_github_teams_become_org_colon_team_groups(tmp_path):
    s = settings.load(
        {
            "GPUHUB_AUTH": "github",
            **OAUTH,
            "GPUHUB_ALLOWED_GROUPS": "uni-lab,uni:ml-101",
            "GPUHUB_LAB_ADMIN_GROUP": "uni:hpc",
        }
    )
    assert s["GPUHUB_LAB_ADMIN_GROUP"] == "uni:hpc"
    c = Config()
    signin.configure(c, s, str(tmp_path))
    assert c.OAuthenticator.allow_existing_users is False
    assert c.GitHubOAuthenticator.allowed_organizations == {"uni-lab", "uni:ml-101"}
    teams = {
        "teams": [
            {"organization": {"login": "uni"}, "slug": "ml-101"},
            {"organization": {"login": "uni"}, "slug": "tas"},
        ]
    }
    assert c.GitHubOAuthenticator.auth_state_groups_key(teams) == ["uni:ml-101", "uni:tas"]


def test_the_quickstart_admin_name_is_refused_in_oauth_modes():
    with pytest.raises(settings.SettingsError, match=r"^GPUHUB_ADMIN_USERS=admin is the shared-password quickstart"):
        settings.load({"GPUHUB_AUTH": "github", **OAUTH, "GPUHUB_ADMIN_USERS": "admin"})
    assert settings.load({"GPUHUB_AUTH": "github", **OAUTH, "GPUHUB_ADMIN_USERS": "prof-x"})["GPUHUB_ADMIN_USERS"] == [
        "prof-x"
    ]


def test_a_damaged_key_file_is_one_line_not_a_new_key(tmp_path):
    key = tmp_path / "jupyterhub_crypt_key"
    key.write_text("not hex")
    with pytest.raises(signin.SignInError, match=r"is not a 64-hex-digit key"):
        signin.persisted_key(str(key))
    assert key.read_text() == "not hex"


def test_a_discovery_document_that_is_not_an_object_is_named(discovery):
    with pytest.raises(signin.SignInError, match=r"is not an OpenID configuration object"):
        signin.discover(f"{discovery}/list")
