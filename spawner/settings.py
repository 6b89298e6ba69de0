"""The deployment's environment settings (`.env`): one table, parsed and validated.

`jupyterhub_config.py` reads the hub's settings from here, docs/admin.md's settings table
is written from the same table, and a missing or malformed value stops the hub at
start with one line naming the variable. Pure: no Docker, no JupyterHub.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from . import container
from .sizes import parse_size


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line naming it."""


def _size(text: str) -> str:
    if parse_size(text) <= 0:
        raise ValueError("must be larger than zero")
    return text.strip().upper()


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be zero or a positive whole number")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


def _optional_cpus(text: str) -> float | None:
    if not text.strip():
        return None
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number of CPUs, or empty for no limit")
    return value


_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]*$")


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"'{name}' is not a valid lower-case user name")
    return names


def _host(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError("must not be empty")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", text):
            raise ValueError("must be an IP address or a host name") from None
    return text


def _docker_name(text: str) -> str:
    if not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", text):
        raise ValueError("must be a Docker object name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
    return text


def _image(text: str) -> str:
    if not re.match(r"^[a-z0-9][a-z0-9._/:@-]*$", text):
        raise ValueError("must be a Docker image reference such as gpuhub/notebook:latest")
    return text


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError("must be one of " + ", ".join(options))
        return text

    return parse


def _password(min_length: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if len(text) < min_length:
            raise ValueError(f"must be at least {min_length} characters long")
        return text

    return parse


def _text(text: str) -> str:
    return text


def _url(text: str) -> str:
    text = text.strip().rstrip("/")
    if not re.match(r"^https?://[A-Za-z0-9.-]+(:\d+)?(/[^\s]*)?$", text):
        raise ValueError("must be an http(s):// URL")
    return text


def _groups(text: str) -> list[str]:
    """Comma-separated group names as the identity provider spells them (GitHub: org or org:team)."""
    groups = [g.strip() for g in text.split(",") if g.strip()]
    for group in groups:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$", group):
            raise ValueError(f"'{group}' is not a valid group name")
    return groups


def _scopes(text: str) -> list[str]:
    scopes = text.split()
    if "openid" not in scopes:
        raise ValueError("must include openid")
    for scope in scopes:
        if not re.match(r"^[A-Za-z0-9_.:/-]+$", scope):
            raise ValueError(f"'{scope}' is not a valid scope")
    return scopes


def _group(text: str) -> str:
    groups = _groups(text)
    if len(groups) != 1:
        raise ValueError("must be exactly one group name")
    return groups[0]


def _claim(text: str) -> str:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_.:-]*$", text):
        raise ValueError("must be a claim name such as preferred_username")
    return text


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value == "true"


def _abs_path(text: str) -> str:
    if not text.startswith("/") or "\n" in text:
        raise ValueError("must be an absolute path")
    return text.rstrip("/") or "/"


def _log_level(text: str) -> str:
    return _choice("DEBUG", "INFO", "WARNING", "ERROR")(text.upper())


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None  # None: required
    parse: Callable[[str], Any]
    help: str
    secret: bool = False  # never echoed in error messages
    modes: tuple[str, ...] = ()  # only read for these GPUHUB_AUTH modes (empty: always)
    trait: str = ""  # "Class.trait" the value sets as it is (`apply`); others are set in jupyterhub_config.py


OAUTH_MODES = ("github", "oidc")

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "GPUHUB_AUTH",
        "shared-password",
        _choice("shared-password", "github", "oidc"),
        "How users sign in: `shared-password` (JupyterHub's SharedPasswordAuthenticator), `github` "
        "(GitHubOAuthenticator) or `oidc` (GenericOAuthenticator against any OpenID Connect provider).",
    ),
    Setting(
        "GPUHUB_SHARED_PASSWORD",
        None,
        _password(8),
        "`shared-password` mode: the password every non-admin user signs in with (at least 8 characters).",
        secret=True,
        modes=("shared-password",),
    ),
    Setting(
        "GPUHUB_ADMIN_USERS",
        "admin",
        _names,
        "Comma-separated hub admins (full rights); in `shared-password` mode they sign in with GPUHUB_ADMIN_PASSWORD.",
    ),
    Setting(
        "GPUHUB_ADMIN_PASSWORD",
        None,
        _password(32),
        "`shared-password` mode: the admins' password (at least 32 characters; `make up` generates one).",
        secret=True,
        modes=("shared-password",),
    ),
    Setting(
        "GPUHUB_ALLOWED_USERS",
        "",
        _names,
        "Comma-separated user names allowed to sign in; empty allows any name (`shared-password`) or "
        "anyone in GPUHUB_ALLOWED_GROUPS (OAuth modes).",
    ),
    Setting(
        "GPUHUB_PUBLIC_URL",
        None,
        _url,
        "OAuth modes: the URL users open, e.g. `https://gpu.example.edu`; the provider's redirect URI is "
        "this plus `/hub/oauth_callback`.",
        modes=OAUTH_MODES,
    ),
    Setting(
        "GPUHUB_OAUTH_CLIENT_ID",
        None,
        _text,
        "OAuth modes: the client (application) id registered with the provider.",
        modes=OAUTH_MODES,
    ),
    Setting(
        "GPUHUB_OAUTH_CLIENT_SECRET",
        None,
        _text,
        "OAuth modes: the client secret registered with the provider.",
        secret=True,
        modes=OAUTH_MODES,
    ),
    Setting(
        "GPUHUB_OIDC_ISSUER",
        None,
        _url,
        "`oidc` mode: the provider's issuer URL; its `/.well-known/openid-configuration` is read at hub start.",
        modes=("oidc",),
    ),
    Setting(
        "GPUHUB_OIDC_SCOPES",
        "openid profile email",
        _scopes,
        "`oidc` mode: space-separated scopes to ask for; add the one that releases the groups claim "
        "(often `groups`) if your provider needs it.",
        modes=("oidc",),
    ),
    Setting(
        "GPUHUB_OIDC_USERNAME_CLAIM",
        "preferred_username",
        _claim,
        "`oidc` mode: the userinfo claim that becomes the JupyterHub user name.",
        modes=("oidc",),
    ),
    Setting(
        "GPUHUB_OIDC_GROUPS_CLAIM",
        "groups",
        _claim,
        "`oidc` mode: the userinfo claim listing the user's groups; they become JupyterHub groups.",
        modes=("oidc",),
    ),
    Setting(
        "GPUHUB_ALLOWED_GROUPS",
        "",
        _groups,
        "OAuth modes: who may sign in. `oidc`: provider groups; `github`: organizations or `org:team`. "
        "Empty: only GPUHUB_ALLOWED_USERS and admins.",
        modes=OAUTH_MODES,
    ),
    Setting(
        "GPUHUB_ADMIN_GROUPS",
        "",
        _groups,
        "OAuth modes: provider groups (`github`: `org:team`) whose members are full hub admins.",
        modes=OAUTH_MODES,
    ),
    Setting(
        "GPUHUB_LAB_ADMIN_GROUP",
        "lab-admins",
        _group,
        "OAuth modes: the group (as the provider names it; GitHub: `org:team`) whose members get the "
        "`lab-admin` role: quotas, groups, every server; not full admin.",
        modes=OAUTH_MODES,
    ),
    Setting(
        "GPUHUB_TOKEN_MAX_AGE",
        "2592000",
        _positive,
        "Longest lifetime in seconds of an API token a user creates (default 30 days).",
        trait="JupyterHub.token_expires_in_max_seconds",
    ),
    Setting(
        "GPUHUB_NOTEBOOK_IMAGE",
        "gpuhub/notebook:latest",
        _image,
        "The notebook image user servers run.",
        trait="DockerSpawner.image",
    ),
    Setting(
        "GPUHUB_NETWORK",
        "gpuhub-users",
        _docker_name,
        "Docker network shared by the hub and the user containers.",
        trait="DockerSpawner.network_name",
    ),
    Setting(
        "GPUHUB_BACKEND",
        "docker",
        _choice("docker", "swarm"),
        "`docker`: one Docker host (`make up`). `swarm`: servers run as services on a Docker Swarm's"
        ' nodes, placed by gpuhub\'s ledger (`make swarm-up`; docs/admin.md: "More than one GPU server").',
    ),
    Setting(
        "GPUHUB_SWARM_HOME_MODE",
        "shared-path",
        _choice("shared-path", "home-node"),
        "Swarm: `shared-path` keeps homes under GPUHUB_SWARM_HOME_ROOT, mounted on every node;"
        " `home-node` keeps a user's home volume on one node and runs their servers only there.",
        trait="GPUSwarmSpawner.home_mode",
    ),
    Setting(
        "GPUHUB_SWARM_HOME_ROOT",
        "/srv/gpuhub/homes",
        _abs_path,
        "Swarm, `shared-path`: the shared folder (NFS, CephFS) mounted at this path on every node and in the hub.",
        trait="GPUSwarmSpawner.shared_home_root",
    ),
    Setting(
        "GPUHUB_SWARM_REQUEST_GENERIC_RESOURCES",
        "false",
        _bool,
        "Swarm: also request granted GPUs as Swarm generic resources; refused unless every node runs Engine >= 23.",
        trait="GPUSwarmSpawner.request_generic_resources",
    ),
    Setting(
        "GPUHUB_SWARM_NODE_SETTLE",
        "30",
        _count,
        "Swarm: seconds a node back from Down must report before its devices are handed out again.",
        trait="GPUSwarmSpawner.node_settle",
    ),
    Setting(
        "GPUHUB_RECONCILE_INTERVAL",
        "60",
        _positive,
        "Seconds between comparisons of gpuhub's ledger with the engine (and, on Swarm, node states).",
        trait="GPUDockerSpawner.reconcile_interval",
    ),
    Setting(
        "GPUHUB_HUB_CONNECT_IP",
        "hub",
        _host,
        "Address at which user containers reach the hub's API (the compose service name).",
    ),
    Setting("GPUHUB_PORT", "8000", _port, "Port the proxy serves users on, inside the hub container."),
    Setting("GPUHUB_HUB_PORT", "8081", _port, "Port of the hub's API, for the proxy and user servers."),
    Setting("GPUHUB_PROXY_API_PORT", "8001", _port, "Port of configurable-http-proxy's REST API (loopback only)."),
    Setting(
        "GPUHUB_CONSOLE_PORT",
        "8002",
        _port,
        "Port of the lab admin console service (loopback only; people reach it through the proxy at "
        "/services/gpuhub/).",
    ),
    Setting(
        "GPUHUB_DATA_DIR",
        "/srv/jupyterhub",
        _text,
        "Directory of the hub's state: database, cookie secret (a Docker volume under compose).",
    ),
    Setting(
        "GPUHUB_DATABASE",
        "sqlite",
        _choice("sqlite", "postgres"),
        "The hub database: `sqlite` (a file in GPUHUB_DATA_DIR) or `postgres` (the compose profile's server, "
        "which `make up` then starts; password GPUHUB_POSTGRES_PASSWORD).",
    ),
    Setting(
        "GPUHUB_POSTGRES_PASSWORD",
        "",
        _text,
        "Password of the `postgres` profile's database (generated by `make up`; set it before the first start).",
        secret=True,
    ),
    Setting(
        "GPUHUB_DB_URL",
        "",
        _text,
        "SQLAlchemy URL of a hub database elsewhere; overrides GPUHUB_DATABASE.",
    ),
    Setting(
        "GPUHUB_MEM_LIMIT",
        "8G",
        _size,
        "Memory limit of each user container (e.g. 8G).",
        trait="DockerSpawner.mem_limit",
    ),
    Setting(
        "GPUHUB_CPU_LIMIT",
        "",
        _optional_cpus,
        "CPUs each user container may use; empty: no limit.",
        trait="DockerSpawner.cpu_limit",
    ),
    Setting(
        "GPUHUB_SHM_SIZE",
        container.DEFAULT_SHM_SIZE,
        _size,
        "Size of /dev/shm in user containers; PyTorch DataLoader workers need more than Docker's 64M.",
        trait="GPUDockerSpawner.shm_size",
    ),
    Setting(
        "GPUHUB_PIDS_LIMIT",
        str(container.DEFAULT_PIDS_LIMIT),
        _positive,
        "Most processes/threads a user container may run.",
        trait="GPUDockerSpawner.pids_limit",
    ),
    Setting(
        "GPUHUB_HOME_SIZE",
        "",
        container.home_size,
        "Most each user's home volume may hold (e.g. `10G`); empty: no limit. Docker enforces it only with its"
        " volumes folder on XFS mounted with `prjquota`; elsewhere the hub refuses to start"
        ' (docs/admin.md: "Home size limits"). Homes made before it was set stay unlimited.',
        trait="GPUDockerSpawner.home_size",
    ),
    Setting(
        "GPUHUB_CONCURRENT_SPAWN_LIMIT",
        "64",
        _positive,
        "Most servers starting at once; further starts are refused with 429 until some are up.",
        trait="JupyterHub.concurrent_spawn_limit",
    ),
    Setting("GPUHUB_START_TIMEOUT", "300", _positive, "Seconds a server may take to start before it is failed."),
    Setting(
        "GPUHUB_IDLE_TIMEOUT",
        "3600",
        _count,
        "Seconds without activity after which jupyterhub-idle-culler stops a server; 0 turns culling off.",
    ),
    Setting(
        "GPUHUB_GPU_CONFIG",
        "",
        _text,
        "JSON file of GPU profiles, static inventory, excluded GPUs and quotas (docs/gpus.md); empty: CPU only.",
    ),
    Setting(
        "GPUHUB_GPU_WAIT_TIMEOUT",
        "600",
        _positive,
        "Seconds a spawn may wait in the GPU queue before it fails with a clear message.",
        trait="GPUDockerSpawner.gpu_wait_timeout",
    ),
    Setting(
        "GPUHUB_TELEMETRY_INTERVAL",
        "10",
        _count,
        "Seconds between GPU telemetry samples (metrics, GPU-idle culling, limits, budgets); 0 turns telemetry "
        "and GPU-idle culling off (limits and budgets are then checked every minute).",
        trait="GPUDockerSpawner.telemetry_interval",
    ),
    Setting(
        "GPUHUB_CULL_WARNING",
        "300",
        _count,
        "Seconds before a stop for a profile limit or a used-up budget that the user is warned.",
        trait="GPUDockerSpawner.cull_warning",
    ),
    Setting(
        "GPUHUB_LOG_LEVEL",
        "INFO",
        _log_level,
        "Hub log level: DEBUG, INFO, WARNING or ERROR.",
        trait="JupyterHub.log_level",
    ),
)


def load(environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse every setting from `environ`; raise SettingsError naming the first bad one."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.modes and values["GPUHUB_AUTH"] not in setting.modes:
            values[setting.name] = None  # not used by this sign-in mode
            continue
        raw = environ.get(setting.name)
        if raw is None or (raw == "" and setting.default is None):
            if setting.default is None:
                mode = f" (needed for GPUHUB_AUTH={values['GPUHUB_AUTH']})" if setting.modes else ""
                raise SettingsError(f"{setting.name} is not set{mode}: {setting.help}")
            raw = setting.default
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as e:
            shown = "(hidden)" if setting.secret else repr(raw)
            raise SettingsError(f"{setting.name}={shown} is invalid: {e}") from None
    if values["GPUHUB_AUTH"] in OAUTH_MODES and values["GPUHUB_ADMIN_USERS"] == ["admin"]:
        raise SettingsError(
            "GPUHUB_ADMIN_USERS=admin is the shared-password quickstart's admin; with "
            f"GPUHUB_AUTH={values['GPUHUB_AUTH']} anyone the provider calls 'admin' would be hub admin: "
            "name real accounts or leave it empty and use GPUHUB_ADMIN_GROUPS"
        )
    if (
        values["GPUHUB_AUTH"] == "shared-password"
        and values["GPUHUB_SHARED_PASSWORD"] == values["GPUHUB_ADMIN_PASSWORD"]
    ):
        raise SettingsError("GPUHUB_ADMIN_PASSWORD must differ from GPUHUB_SHARED_PASSWORD")
    if values["GPUHUB_HOME_SIZE"] and values["GPUHUB_BACKEND"] != "docker":
        raise SettingsError(
            f"GPUHUB_HOME_SIZE works with GPUHUB_BACKEND=docker only (homes on a Swarm are a shared folder or a"
            f" node's volume); leave it empty with GPUHUB_BACKEND={values['GPUHUB_BACKEND']}"
        )
    database = values["GPUHUB_DATABASE"]
    if database == "postgres" and values["GPUHUB_BACKEND"] == "swarm" and not values["GPUHUB_DB_URL"]:
        raise SettingsError(
            "GPUHUB_DATABASE=postgres is the compose deployment's server; on Swarm name a database with GPUHUB_DB_URL"
        )
    if database == "postgres" and not values["GPUHUB_DB_URL"] and not values["GPUHUB_POSTGRES_PASSWORD"]:
        raise SettingsError("GPUHUB_DATABASE=postgres needs GPUHUB_POSTGRES_PASSWORD (the database's password)")
    return values


def database_url(values: Mapping[str, Any]) -> str:
    """The hub database's SQLAlchemy URL: GPUHUB_DB_URL, else the one GPUHUB_DATABASE names."""
    if values["GPUHUB_DB_URL"]:
        return values["GPUHUB_DB_URL"]
    if values["GPUHUB_DATABASE"] == "postgres":
        password = quote(values["GPUHUB_POSTGRES_PASSWORD"], safe="")
        return f"postgresql+psycopg2://gpuhub:{password}@postgres/gpuhub"
    return f"sqlite:///{os.path.join(values['GPUHUB_DATA_DIR'], 'jupyterhub.sqlite')}"


def apply(config: Any, values: Mapping[str, Any]) -> None:
    """Set every trait the table names (`Setting.trait`) on a traitlets config from loaded values."""
    for setting in SETTINGS:
        if setting.trait and values.get(setting.name) is not None:
            section, trait = setting.trait.split(".")
            config[section][trait] = values[setting.name]


def markdown_table() -> str:
    """docs/admin.md's settings table, generated from SETTINGS."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for s in SETTINGS:
        default = "*(required)*" if s.default is None else (f"`{s.default}`" if s.default else "*(empty)*")
        sets = f" Sets `{s.trait}`." if s.trait else ""
        rows.append(f"| `{s.name}` | {default} | {s.help}{sets} |")
    return "\n".join(rows)
