"""gpuhub's JupyterHub configuration.

Deployment settings come from the environment (`.env`, see docs/admin.md's settings
table); everything else is fixed here so every gpuhub behaves the same. A
missing or malformed setting stops the hub with one line naming the variable.
"""

import os
import secrets
import sys

from spawner import api_errors, console, gpu_config, hub_api, inventory, settings, signin, staff_roles, swarm

c = get_config()  # noqa: F821 - provided by JupyterHub

try:
    s = settings.load(os.environ)
    # Checked now, against this host's GPUs (a Swarm's: every node's), so a bad profile stops the hub at start.
    _discover = inventory.discover
    if s["GPUHUB_BACKEND"] == "swarm":
        from spawner import swarm_engine

        # A generic-resource request on an Engine below 23 would get running GPU tasks killed.
        swarm.check_generic_request(s["GPUHUB_SWARM_REQUEST_GENERIC_RESOURCES"], swarm_engine.read_nodes())
        _discover = swarm_engine.cluster_inventory
    if s["GPUHUB_HOME_SIZE"]:
        from spawner.spawner import engine_refuses_home_size

        # A limit the engine cannot enforce (no XFS project quota under its volumes) stops the hub now.
        _refusal = engine_refuses_home_size(s["GPUHUB_HOME_SIZE"])
        if _refusal:
            raise settings.SettingsError(_refusal)
    gpu = gpu_config.load(s["GPUHUB_GPU_CONFIG"], discover=_discover, hub_idle_timeout=s["GPUHUB_IDLE_TIMEOUT"])
    for _why in gpu["disabled"]:
        print(f"gpuhub: {_why}", file=sys.stderr)
    data_dir = s["GPUHUB_DATA_DIR"]
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    # Files that must not outlive the hub's container: compose mounts a tmpfs here.
    run_dir = os.path.join(data_dir, "run")
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    # --- Sign-in (docs/admin.md: "Sign-in") -----------------------------------------
    signin.configure(c, s, data_dir)
except (settings.SettingsError, gpu_config.GPUConfigError, signin.SignInError, swarm.SwarmConfigError) as e:
    print(f"gpuhub: configuration error: {e}", file=sys.stderr)
    sys.exit(2)

# Settings that set one trait as they are (the table's `trait` column: docs/admin.md).
settings.apply(c, s)

# --- The hub, its proxy and its state -------------------------------------------------
c.JupyterHub.bind_url = f"http://0.0.0.0:{s['GPUHUB_PORT']}"
c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{s['GPUHUB_HUB_PORT']}"
c.JupyterHub.hub_connect_url = f"http://{s['GPUHUB_HUB_CONNECT_IP']}:{s['GPUHUB_HUB_PORT']}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s['GPUHUB_PROXY_API_PORT']}"
# On a host the pid file lets the next hub stop a proxy that a killed hub left running. JupyterHub
# stops whatever process the file names, though: after a reboot, or in a restarted container, that
# PID may be any process, the new hub included (a restart loop). So a file that does not name a
# running proxy is dropped here; under compose it does not even survive the container (tmpfs).
c.ConfigurableHTTPProxy.pid_file = os.path.join(run_dir, "jupyterhub-proxy.pid")
if os.path.isdir("/proc/self"):
    try:
        with open(c.ConfigurableHTTPProxy.pid_file) as f:
            _proxy_pid = int(f.read())
        with open(f"/proc/{_proxy_pid}/cmdline", "rb") as f:
            _names_a_proxy = b"configurable-http-proxy" in f.read()
    except (OSError, ValueError):
        _names_a_proxy = False
    if not _names_a_proxy and os.path.exists(c.ConfigurableHTTPProxy.pid_file):
        os.remove(c.ConfigurableHTTPProxy.pid_file)
c.JupyterHub.cookie_secret_file = os.path.join(data_dir, "jupyterhub_cookie_secret")
c.JupyterHub.db_url = settings.database_url(s)
# User servers outlive hub restarts and upgrades; the hub finds them again.
c.JupyterHub.cleanup_servers = False
# Named servers let a user keep a CPU server beside a GPU one; GPU quotas count across all of them.
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 5

# --- Access: tokens, metrics, roles ---------------------------------------------------------
c.JupyterHub.authenticate_prometheus = True  # /hub/metrics needs the read:metrics scope
c.JupyterHub.load_roles = []  # services' roles only: staff roles are the authenticator's (managed roles)
# Sign-in chose the mode; the same authenticator runs it, giving the lab-admin and instructor
# roles as managed roles that follow the courses at once (spawner/staff_roles.py).
c.JupyterHub.authenticator_class = staff_roles.AUTHENTICATORS[c.JupyterHub.authenticator_class]
if s["GPUHUB_AUTH"] == "shared-password":
    # Anyone with the shared password may pick any name, so a role given by name would be
    # anyone's: lab-admin and instructor roles need a real identity (oidc or github).
    c.StaffRoles.give_staff_roles = False
    print("gpuhub: shared-password mode: lab-admin and instructor roles are off (use oidc or github)", file=sys.stderr)
else:
    c.StaffRoles.lab_admin_group = s["GPUHUB_LAB_ADMIN_GROUP"]

# --- User servers ----------------------------------------------------------------------
c.JupyterHub.spawner_class = (
    "spawner.swarm_spawner.GPUSwarmSpawner" if s["GPUHUB_BACKEND"] == "swarm" else "spawner.spawner.GPUDockerSpawner"
)
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.prefix = "gpuhub"
c.Spawner.default_url = "/lab"
# A spawn may first wait in the GPU queue, then start normally.
c.Spawner.start_timeout = s["GPUHUB_START_TIMEOUT"] + s["GPUHUB_GPU_WAIT_TIMEOUT"]
# How long the hub waits for a started server's first answer through the proxy: a class
# starting at once on a loaded host takes longer than JupyterHub's 30 s default.
c.Spawner.http_timeout = 120

# --- GPUs: profiles, inventory, quotas -------------------------------------------------------
c.GPUDockerSpawner.profile_list = gpu["profiles"]
c.GPUDockerSpawner.gpus = gpu["gpus"]
c.GPUDockerSpawner.gpu_exclude = gpu["exclude"]
# The wait queue survives hub restarts and upgrades (docs/gpus.md: "Allocation guarantees").
c.GPUDockerSpawner.queue_file = os.path.join(data_dir, "gpu-queue.json")
# Swarm, home-node mode: which node each user's home volume lives on.
c.GPUSwarmSpawner.homes_file = os.path.join(data_dir, "swarm-homes.json")
c.GPUQuota.default = gpu["default"]
c.GPUQuota.groups = gpu["groups"]

# --- GPU operations: telemetry, usage records, limits, budgets (docs/gpus.md) --------------
# Usage records live in the hub's own database, so they follow its choice (SQLite or PostgreSQL).
c.GPUDockerSpawner.usage_db_url = c.JupyterHub.db_url
if s["GPUHUB_BACKEND"] == "swarm":
    # The hub's NVML sees only the manager's GPUs, not the nodes': no readings, so no GPU-idle
    # culling (time limits, budgets and usage records work as on one host).
    c.GPUDockerSpawner.telemetry_interval = 0
    print("gpuhub: Swarm backend: GPU telemetry and GPU-idle culling are off (docs/admin.md)", file=sys.stderr)


# gpuhub stops servers for limits and budgets through the hub's REST API, with a token of its own.
# It is kept beside the cookie secret: JupyterHub never removes a config token from its database,
# so a new one at every start would leave every earlier one valid.
def _kept_token(path: str) -> str:
    try:
        with open(path) as f:
            token = f.read().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_hex(32)
    fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)
    return token


_ops_token = _kept_token(os.path.join(data_dir, "gpuhub-operations-token"))
c.GPUDockerSpawner.hub_api_url = f"http://127.0.0.1:{s['GPUHUB_HUB_PORT']}/hub/api"
c.GPUDockerSpawner.hub_api_token = _ops_token
c.JupyterHub.custom_scopes = hub_api.CUSTOM_SCOPES
c.JupyterHub.extra_handlers = hub_api.handlers()
api_errors.install()  # a bare refusal of JupyterHub's API says at least what it refused
# The hub's pages say why gpuhub stopped a server, and warn before it does.
c.JupyterHub.template_paths = [os.path.join(os.path.dirname(os.path.abspath(hub_api.__file__)), "templates", "hub")]

# --- Services --------------------------------------------------------------------------
c.JupyterHub.services = [{"name": "gpuhub-operations", "api_token": _ops_token}]
c.JupyterHub.load_roles.append(
    {
        "name": "gpuhub-operations",
        "description": "gpuhub stops servers for their profile limits and GPU-hour budgets",
        "scopes": ["delete:servers"],  # all it does: DELETE /users/{name}/server(s/{name})
        "services": ["gpuhub-operations"],
    }
)
# The lab admin console (spawner/console/), listed in the hub's Services menu. It calls the hub's API
# with each person's own OAuth token, cut to these scopes and to what that person holds, so the hub
# decides every permission. Everyone may open it: students get its own 403 page saying why.
c.JupyterHub.services += [
    {
        "name": "gpuhub",
        "display": True,
        "url": f"http://127.0.0.1:{s['GPUHUB_CONSOLE_PORT']}",
        "command": [sys.executable, "-m", "spawner.console"],
        "oauth_no_confirm": True,
        # Custom scopes the hub does not (yet) define would stop it at start: only defined ones.
        "oauth_client_allowed_scopes": [
            scope
            for scope in console.TOKEN_SCOPES
            if not scope.startswith("custom:") or scope in c.JupyterHub.custom_scopes
        ],
    }
]
c.JupyterHub.extra_user_scopes = ["access:services!service=gpuhub"]
if s["GPUHUB_IDLE_TIMEOUT"]:
    c.JupyterHub.services += [
        {
            "name": "idle-culler",
            "command": [
                sys.executable,
                "-m",
                "jupyterhub_idle_culler",
                f"--timeout={s['GPUHUB_IDLE_TIMEOUT']}",
            ],
        }
    ]
    c.JupyterHub.load_roles.append(
        {
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }
    )
