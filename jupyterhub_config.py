"""gpuhub's JupyterHub configuration.

Deployment settings come from the environment (`.env`, see README's settings
table); everything else is fixed here so every gpuhub behaves the same. A
missing or malformed setting stops the hub with one line naming the variable.
"""

import os
import sys

from spawner import gpu_config, settings

c = get_config()  # noqa: F821 - provided by JupyterHub

try:
    s = settings.load(os.environ)
    # Checked now, against this host's GPUs, so a bad profile stops the hub at start.
    gpu = gpu_config.load(s["GPUHUB_GPU_CONFIG"])
except (settings.SettingsError, gpu_config.GPUConfigError) as e:
    print(f"gpuhub: configuration error: {e}", file=sys.stderr)
    sys.exit(2)

data_dir = s["GPUHUB_DATA_DIR"]
os.makedirs(data_dir, mode=0o700, exist_ok=True)

# --- The hub, its proxy and its state -------------------------------------------------
c.JupyterHub.bind_url = f"http://0.0.0.0:{s['GPUHUB_PORT']}"
c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{s['GPUHUB_HUB_PORT']}"
c.JupyterHub.hub_connect_url = f"http://{s['GPUHUB_HUB_CONNECT_IP']}:{s['GPUHUB_HUB_PORT']}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s['GPUHUB_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.pid_file = os.path.join(data_dir, "jupyterhub-proxy.pid")
c.JupyterHub.cookie_secret_file = os.path.join(data_dir, "jupyterhub_cookie_secret")
c.JupyterHub.db_url = s["GPUHUB_DB_URL"] or f"sqlite:///{os.path.join(data_dir, 'jupyterhub.sqlite')}"
c.JupyterHub.log_level = s["GPUHUB_LOG_LEVEL"]
# User servers outlive hub restarts and upgrades; the hub finds them again.
c.JupyterHub.cleanup_servers = False
c.JupyterHub.concurrent_spawn_limit = s["GPUHUB_CONCURRENT_SPAWN_LIMIT"]
# Named servers let a user keep a CPU server beside a GPU one; GPU quotas count across all of them.
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 5

# --- Sign-in ---------------------------------------------------------------------------
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = s["GPUHUB_SHARED_PASSWORD"]
c.SharedPasswordAuthenticator.admin_password = s["GPUHUB_ADMIN_PASSWORD"]
c.Authenticator.admin_users = set(s["GPUHUB_ADMIN_USERS"])
if s["GPUHUB_ALLOWED_USERS"]:
    c.Authenticator.allowed_users = set(s["GPUHUB_ALLOWED_USERS"])
else:
    c.Authenticator.allow_all = True

# --- User servers ----------------------------------------------------------------------
c.JupyterHub.spawner_class = "gpu-docker"
c.DockerSpawner.image = s["GPUHUB_NOTEBOOK_IMAGE"]
c.DockerSpawner.network_name = s["GPUHUB_NETWORK"]
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.prefix = "gpuhub"
c.DockerSpawner.mem_limit = s["GPUHUB_MEM_LIMIT"]
c.DockerSpawner.cpu_limit = s["GPUHUB_CPU_LIMIT"]
c.GPUDockerSpawner.shm_size = s["GPUHUB_SHM_SIZE"]
c.GPUDockerSpawner.pids_limit = s["GPUHUB_PIDS_LIMIT"]
c.Spawner.default_url = "/lab"
# A spawn may first wait in the GPU queue, then start normally.
c.Spawner.start_timeout = s["GPUHUB_START_TIMEOUT"] + s["GPUHUB_GPU_WAIT_TIMEOUT"]
c.GPUDockerSpawner.gpu_wait_timeout = s["GPUHUB_GPU_WAIT_TIMEOUT"]

# --- GPUs: profiles, inventory, quotas -------------------------------------------------------
c.GPUDockerSpawner.profile_list = gpu["profiles"]
c.GPUDockerSpawner.gpus = gpu["gpus"]
c.GPUDockerSpawner.gpu_exclude = gpu["exclude"]
c.GPUQuota.default = gpu["default"]
c.GPUQuota.groups = gpu["groups"]
c.Spawner.http_timeout = 120

# --- Services --------------------------------------------------------------------------
if s["GPUHUB_IDLE_TIMEOUT"]:
    c.JupyterHub.services = [
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
    c.JupyterHub.load_roles = [
        {
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }
    ]
