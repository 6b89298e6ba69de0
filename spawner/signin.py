"""Sign-in: the authenticator for GPUHUB_AUTH, configured from the settings.

`shared-password` is JupyterHub's SharedPasswordAuthenticator; `github` and `oidc` are
oauthenticator's GitHubOAuthenticator and GenericOAuthenticator. In the OAuth modes the
provider's groups become JupyterHub groups at every sign-in (`manage_groups`), so
`students`, `lab-admins` or `course-ml101` come from the IdP and drive quotas and courses.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from typing import Any


class SignInError(ValueError):
    """Sign-in is misconfigured; one line naming the setting."""


def discover(issuer: str, timeout: float = 10) -> dict[str, Any]:
    """The provider's OpenID configuration (read once, at hub start, before the event loop runs)."""
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            doc = json.load(r)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise SignInError(f"GPUHUB_OIDC_ISSUER={issuer!r}: cannot read {url} ({reason})") from None
    if not isinstance(doc, dict):
        raise SignInError(f"GPUHUB_OIDC_ISSUER={issuer!r}: {url} is not an OpenID configuration object")
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint") if not doc.get(k)]
    if missing:
        raise SignInError(f"GPUHUB_OIDC_ISSUER={issuer!r}: {url} lacks {', '.join(missing)}")
    return doc


def persisted_key(path: str) -> bytes:
    """A 32-byte key kept in `path` (mode 600), created on first use: auth state survives restarts."""
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.chmod(path, 0o600)
    with open(path) as f:
        text = f.read().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SignInError(f"{path} is not a 64-hex-digit key; restore it from backup (auth state needs the old key)")
    return key


def github_groups(auth_state: dict) -> list[str]:
    """GitHub teams as JupyterHub groups, named `org:team` like GitHubOAuthenticator's allowed_organizations."""
    return sorted({f"{t['organization']['login']}:{t['slug']}" for t in auth_state.get("teams") or []})


def configure(c, s: dict[str, Any], data_dir: str) -> None:
    """Set the authenticator's config for the chosen mode; raises SignInError."""
    mode = s["GPUHUB_AUTH"]
    c.Authenticator.admin_users = set(s["GPUHUB_ADMIN_USERS"])
    if s["GPUHUB_ALLOWED_USERS"]:
        c.Authenticator.allowed_users = set(s["GPUHUB_ALLOWED_USERS"])
    if mode == "shared-password":
        c.JupyterHub.authenticator_class = "shared-password"
        c.SharedPasswordAuthenticator.user_password = s["GPUHUB_SHARED_PASSWORD"]
        c.SharedPasswordAuthenticator.admin_password = s["GPUHUB_ADMIN_PASSWORD"]
        if not s["GPUHUB_ALLOWED_USERS"]:
            c.Authenticator.allow_all = True
        return

    c.OAuthenticator.client_id = s["GPUHUB_OAUTH_CLIENT_ID"]
    c.OAuthenticator.client_secret = s["GPUHUB_OAUTH_CLIENT_SECRET"]
    c.OAuthenticator.oauth_callback_url = f"{s['GPUHUB_PUBLIC_URL']}/hub/oauth_callback"
    c.OAuthenticator.manage_groups = True
    # Leaving the allowed groups at the provider locks the account out here too.
    c.OAuthenticator.allow_existing_users = False
    c.OAuthenticator.admin_groups = set(s["GPUHUB_ADMIN_GROUPS"])
    # Tokens of the provider are kept (encrypted) for the user's session, e.g. for refresh.
    c.Authenticator.enable_auth_state = True
    c.CryptKeeper.keys = [persisted_key(os.path.join(data_dir, "jupyterhub_crypt_key"))]
    if mode == "oidc":
        doc = discover(s["GPUHUB_OIDC_ISSUER"])
        c.JupyterHub.authenticator_class = "generic-oauth"
        c.GenericOAuthenticator.login_service = "your institution"
        c.GenericOAuthenticator.authorize_url = doc["authorization_endpoint"]
        c.GenericOAuthenticator.token_url = doc["token_endpoint"]
        c.GenericOAuthenticator.userdata_url = doc["userinfo_endpoint"]
        c.GenericOAuthenticator.scope = s["GPUHUB_OIDC_SCOPES"]
        c.GenericOAuthenticator.username_claim = s["GPUHUB_OIDC_USERNAME_CLAIM"]
        c.GenericOAuthenticator.auth_state_groups_key = f"oauth_user.{s['GPUHUB_OIDC_GROUPS_CLAIM']}"
        c.GenericOAuthenticator.allowed_groups = set(s["GPUHUB_ALLOWED_GROUPS"])
    else:
        c.JupyterHub.authenticator_class = "github"
        c.GitHubOAuthenticator.allowed_organizations = set(s["GPUHUB_ALLOWED_GROUPS"])
        c.GitHubOAuthenticator.populate_teams_in_auth_state = True
        c.GitHubOAuthenticator.auth_state_groups_key = github_groups
        c.GitHubOAuthenticator.scope = ["read:org"]
