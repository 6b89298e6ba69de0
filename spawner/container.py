"""Turn a spawn's settings into docker-py `create_container` arguments. Pure.

Everything that decides how a user container looks - labels, home volume,
limits, hardening, GPU device request - is decided here, so it is tested
without Docker. `GPUDockerSpawner` only hands the result to the Docker API.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LABEL_USER = "gpuhub.user"
LABEL_SERVER = "gpuhub.server"
LABEL_DEVICES = "gpuhub.devices"
LABEL_HUB = "gpuhub.hub"
LABEL_QUOTA = "gpuhub.quota"  # the quota (group) the devices count against
LABEL_LEASE = "gpuhub.lease"  # the lease the devices were granted under

#: Environment variables that choose GPUs. Only the spawner sets them, from the grant.
GPU_VISIBILITY_ENV = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")

#: host_config keys an admin's `extra_host_config` may not set: they would undo
#: the hardening or hand out devices behind the allocator's back.
FORBIDDEN_HOST_CONFIG = (
    "privileged",
    "cap_add",
    "cap_drop",
    "security_opt",
    "device_requests",
    "devices",
    "userns_mode",
    "pid_mode",
    "ipc_mode",
    "runtime",
    "device_cgroup_rules",
)
FORBIDDEN_CREATE_KWARGS = ("user", "labels", "host_config", "environment")


_VOLUME_SAFE = set(string.ascii_lowercase + string.digits + ".-")


def volume_safe(name: str) -> str:
    """A user name as it appears in Docker volume names: readable and collision-free.

    Lower-case letters, digits, '.' and '-' stay as they are (the usual user
    names map to themselves); anything else, '_' included, becomes '_xx' hex.
    """
    return "".join(c if c in _VOLUME_SAFE else "".join(f"_{b:02x}" for b in c.encode()) for c in name)


class ContainerConfigError(ValueError):
    """The configured container would break gpuhub's guarantees."""


@dataclass(frozen=True)
class ContainerPlan:
    """What one user container should be; every field is already rendered."""

    name: str
    image: str
    command: Sequence[str]
    env: Mapping[str, str]
    network: str
    port: int
    hub_id: str
    username: str
    server_name: str
    home_volume: str
    home_path: str = "/home/jovyan"
    user: str = "1000:100"
    mem_limit: str | int | None = None
    cpu_limit: float | None = None
    shm_size: str = "2G"
    pids_limit: int = 4096
    devices: Sequence[str] = ()
    charged_to: str = ""
    lease: str = ""
    binds: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    mounts: Sequence[Any] = ()
    extra_create_kwargs: Mapping[str, Any] = field(default_factory=dict)
    extra_host_config: Mapping[str, Any] = field(default_factory=dict)


def _is_root(user: str) -> bool:
    uid = user.split(":", 1)[0].strip()
    return uid in ("", "0", "root")


def _refuse_docker_socket(sources: Sequence[str]) -> None:
    for source in sources:
        if str(source).rstrip("/").endswith("docker.sock"):
            raise ContainerConfigError(
                f"volume {source!r} would give a user container the Docker socket (root on the host)"
            )


def labels(plan: ContainerPlan) -> dict[str, str]:
    """The labels from which a hub finds its containers and their devices in Docker alone."""
    return {
        LABEL_HUB: plan.hub_id,
        LABEL_USER: plan.username,
        LABEL_SERVER: plan.server_name,
        LABEL_DEVICES: ",".join(plan.devices),
        LABEL_QUOTA: plan.charged_to,
        LABEL_LEASE: plan.lease,
    }


def environment(plan: ContainerPlan) -> dict[str, str]:
    """The container's environment; GPU visibility comes from the grant, never from the user."""
    env = {k: v for k, v in plan.env.items() if k not in GPU_VISIBILITY_ENV}
    # "void" rather than unset: a host whose default runtime is nvidia would
    # otherwise expose every GPU to a CPU-only container.
    env["NVIDIA_VISIBLE_DEVICES"] = ",".join(plan.devices) if plan.devices else "void"
    if plan.devices:
        env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
    return env


def device_requests(plan: ContainerPlan) -> list[dict[str, Any]]:
    if not plan.devices:
        return []
    return [{"driver": "nvidia", "device_ids": list(plan.devices), "capabilities": [["gpu"]]}]


def host_config(plan: ContainerPlan) -> dict[str, Any]:
    """Keyword arguments for docker-py's `create_host_config`."""
    extra = dict(copy.deepcopy(plan.extra_host_config))
    bad = sorted(k for k in extra if k in FORBIDDEN_HOST_CONFIG)
    if bad:
        raise ContainerConfigError(f"extra_host_config may not set {', '.join(bad)} (gpuhub enforces these)")
    binds = {plan.home_volume: {"bind": plan.home_path, "mode": "rw"}}
    binds.update(copy.deepcopy(dict(plan.binds)))
    binds.update(extra.pop("binds", None) or {})
    mounts = list(plan.mounts) + list(extra.pop("mounts", None) or [])
    _refuse_docker_socket(list(binds) + [m.get("Source", "") for m in mounts])

    config: dict[str, Any] = {
        "binds": binds,
        "mounts": mounts,
        "network_mode": plan.network,
        "auto_remove": False,
        "shm_size": plan.shm_size,
        "pids_limit": plan.pids_limit,
        "restart_policy": {"Name": "no"},
    }
    if plan.mem_limit is not None:
        config["mem_limit"] = plan.mem_limit
        # Swap would let a container use far more than its memory limit.
        config["memswap_limit"] = plan.mem_limit
    if plan.cpu_limit is not None:
        config["cpu_period"] = 100_000
        config["cpu_quota"] = int(plan.cpu_limit * 100_000)
    config.update(extra)
    # Hardening last, so nothing above can undo it.
    config.update(
        privileged=False,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        device_requests=device_requests(plan),
    )
    return config


def create_kwargs(plan: ContainerPlan) -> dict[str, Any]:
    """Keyword arguments for docker-py's `create_container` (host_config passed separately)."""
    if _is_root(plan.user):
        raise ContainerConfigError(f"user containers must not run as root (user={plan.user!r})")
    extra = dict(copy.deepcopy(plan.extra_create_kwargs))
    bad = sorted(k for k in extra if k in FORBIDDEN_CREATE_KWARGS)
    if bad:
        raise ContainerConfigError(f"extra_create_kwargs may not set {', '.join(bad)} (gpuhub sets these)")
    kwargs: dict[str, Any] = {
        "image": plan.image,
        "name": plan.name,
        "command": list(plan.command),
        "environment": environment(plan),
        "labels": labels(plan),
        "user": plan.user,
        "ports": {f"{plan.port}/tcp": None},
        "volumes": sorted(b["bind"] for b in host_config(plan)["binds"].values()),
    }
    kwargs.update(extra)
    return kwargs
