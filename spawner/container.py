"""What gpuhub adds to the container DockerSpawner builds. Pure.

DockerSpawner's own `create_object` builds every user container from its traits
(image, command, environment, volumes, mounts, links, limits, ports, network and
the admin's `extra_create_kwargs` / `extra_host_config`). gpuhub's layer goes in
through those same traits: the labels from which a hub finds its containers and
their devices in Docker alone, the home volume, the GPU device request by UUID,
the limits DockerSpawner has no trait for, and the hardening, applied last. All
of it is decided here, so it is tested without Docker or JupyterHub.
"""

from __future__ import annotations

import copy
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .sizes import parse_size

LABEL_USER = "gpuhub.user"
LABEL_SERVER = "gpuhub.server"
LABEL_DEVICES = "gpuhub.devices"
LABEL_HUB = "gpuhub.hub"
LABEL_QUOTA = "gpuhub.quota"  # the quota (group) the devices count against
LABEL_LEASE = "gpuhub.lease"  # the lease the devices were granted under
LABEL_PROFILE = "gpuhub.profile"  # the profile it was started with (limits and usage records follow it)

#: Where the home volume is mounted unless `GPUDockerSpawner.home_path` says otherwise: the image's HOME.
DEFAULT_HOME_PATH = "/home/jovyan"
#: uid:gid of the notebook server (the image's jovyan:users); never root.
DEFAULT_USER = "1000:100"
#: /dev/shm size; Docker's 64M makes PyTorch DataLoader workers die with "bus error".
DEFAULT_SHM_SIZE = "2G"
#: Most processes and threads per container: a fork bomb stops here.
DEFAULT_PIDS_LIMIT = 4096

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
    "volumes_from",  # another container's volumes: the hub's would bring the Docker socket
)
#: create_container keys an admin's `extra_create_kwargs` may not set: gpuhub sets them.
FORBIDDEN_CREATE_KWARGS = ("user", "labels", "host_config", "environment")


_VOLUME_SAFE = set(string.ascii_lowercase + string.digits + ".-")


def volume_safe(name: str) -> str:
    """A user name as it appears in Docker volume names: readable and collision-free.

    Lower-case letters, digits, '.' and '-' stay as they are (the usual user
    names map to themselves); anything else, '_' included, becomes '_xx' hex.
    """
    return "".join(c if c in _VOLUME_SAFE else "".join(f"_{b:02x}" for b in c.encode()) for c in name)


def is_root(user: str) -> bool:
    """Whether a `uid[:gid]` (or name) runs as root."""
    return user.split(":", 1)[0].strip() in ("", "0", "root")


class ContainerConfigError(ValueError):
    """The configured container would break gpuhub's guarantees."""


@dataclass(frozen=True)
class ContainerPlan:
    """gpuhub's part of one user container; every field is already rendered."""

    hub_id: str
    username: str
    server_name: str
    home_volume: str
    home_path: str = DEFAULT_HOME_PATH
    user: str = DEFAULT_USER
    mem_limit: int | None = None  # DockerSpawner sets the limit; swap is capped to it here
    shm_size: str = DEFAULT_SHM_SIZE
    pids_limit: int = DEFAULT_PIDS_LIMIT
    devices: Sequence[str] = ()
    charged_to: str = ""
    lease: str = ""
    profile: str = ""
    binds: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # course material, by host path


#: Where the Docker socket lives on a host; mounting it, or a folder above it, is root on the host.
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def refuse_docker_socket(sources: Iterable[str]) -> None:
    """Refuse bind sources that are the Docker socket or a host folder holding it (volume names pass)."""
    for source in sources:
        source = str(source).strip()
        path = "/" + source.strip("/")  # host paths only: a volume name has no leading '/'
        if source.rstrip("/").endswith("docker.sock") or (
            source.startswith("/") and any(s == path or s.startswith(path.rstrip("/") + "/") for s in DOCKER_SOCKETS)
        ):
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
        LABEL_PROFILE: plan.profile,
    }


def environment(env: Mapping[str, str], devices: Sequence[str]) -> dict[str, str]:
    """The container's environment; GPU visibility comes from the grant, never from the user."""
    env = {k: v for k, v in env.items() if k not in GPU_VISIBILITY_ENV}
    # "void" rather than unset: a host whose default runtime is nvidia would
    # otherwise expose every GPU to a CPU-only container.
    env["NVIDIA_VISIBLE_DEVICES"] = ",".join(devices) if devices else "void"
    if devices:
        env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
    return env


def device_requests(plan: ContainerPlan) -> list[dict[str, Any]]:
    if not plan.devices:
        return []
    return [{"driver": "nvidia", "device_ids": list(plan.devices), "capabilities": [["gpu"]]}]


def binds(plan: ContainerPlan) -> dict[str, dict[str, str]]:
    """The home volume and course material, in DockerSpawner's `volume_binds` shape."""
    result = {plan.home_volume: {"bind": plan.home_path, "mode": "rw"}}
    result.update(copy.deepcopy({k: dict(v) for k, v in plan.binds.items()}))
    refuse_docker_socket(result)
    return result


# --- Home size limits (GPUHUB_HOME_SIZE) --------------------------------------------------------
#: The local volume driver's option that caps a volume (an XFS project quota; moby/moby#41330).
HOME_SIZE_OPTION = "size"
#: Smallest limit taken: a bare number is bytes, so "512" is far more likely a slip than a wish.
MIN_HOME_SIZE = 10 * 1024**2


def home_size(text: str) -> str:
    """GPUHUB_HOME_SIZE as Docker's local driver takes it ("10G"), or "" for no limit."""
    text = text.strip()
    if not text:
        return ""
    try:
        size = parse_size(text)
    except ValueError:
        raise ValueError("expected a size such as 10G (K, M, G, T: powers of 1024), or empty for no limit") from None
    if size < MIN_HOME_SIZE:
        raise ValueError("must be at least 10M (a size such as 10G), or empty for no limit")
    return text.upper()


def home_volume_create(name: str, size: str) -> dict[str, Any]:
    """docker-py `create_volume` arguments of a home volume limited to `size`."""
    return {"name": name, "driver": "local", "driver_opts": {HOME_SIZE_OPTION: size}}


def home_volume_problem(volume: Mapping[str, Any], size: str) -> str:
    """Why an existing home volume (`docker volume inspect`) is not limited to `size`; "" when it is."""
    name = volume.get("Name", "?")
    driver = volume.get("Driver") or "local"
    have = str((volume.get("Options") or {}).get(HOME_SIZE_OPTION) or "")
    if driver != "local":
        return f"home volume {name} uses the {driver!r} volume driver, so GPUHUB_HOME_SIZE={size} does not limit it"
    if not have:
        return (
            f"home volume {name} was created without a size (before GPUHUB_HOME_SIZE was set), so it is NOT"
            f" limited to {size}; docs/admin.md (Home size limits) says how to move it to a limited one"
        )
    try:  # Docker also takes "10GiB", "10 gb": the same powers of 1024
        same = parse_size(re.sub(r"(?i)\s|(?<=[kmgt])i?b$", "", have)) == parse_size(size)
    except ValueError:
        same = False
    return "" if same else f"home volume {name} keeps the size it was created with ({have}), not {size}"


def home_size_refusal(size: str, reason: str) -> str:
    """The one line a hub or a start fails with when the engine cannot limit volume sizes."""
    reason = " ".join(reason.split())
    return (
        f"GPUHUB_HOME_SIZE={size}: this Docker Engine cannot limit volume sizes ({reason[:200]}); it needs"
        " Docker's volumes folder (<data-root>/volumes) on XFS mounted with prjquota"
        " (docs/admin.md: Home size limits), or GPUHUB_HOME_SIZE left empty"
    )


#: Run in a started server: the size of the filesystem its home is on, as `df` sees it (blocks, block size).
HOME_STATFS_COMMAND = ("stat", "-f", "-c", "%b %S")


def home_limit_enforced(statfs: str, size: str) -> bool | None:
    """Whether the home's filesystem, as HOME_STATFS_COMMAND printed it, is the limit: XFS reports a
    directory under an enforced project quota as a filesystem of the quota's size. None: not understood.
    A home not limited although its volume says `size` is moby/moby#43891 (a re-created volume name)."""
    try:
        blocks, block_size = (int(word) for word in statfs.split())
    except ValueError:
        return None
    return blocks * block_size <= parse_size(size) + 1024**2


def host_config(plan: ContainerPlan, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The admin's `extra_host_config` with gpuhub's layer on top, for DockerSpawner to merge
    over the host config it builds from its traits (binds, mounts, links, limits, network)."""
    extra = dict(copy.deepcopy(extra or {}))
    bad = sorted(k for k in extra if k in FORBIDDEN_HOST_CONFIG)
    if bad:
        raise ContainerConfigError(f"extra_host_config may not set {', '.join(bad)} (gpuhub enforces these)")
    if not isinstance(extra.get("binds") or {}, Mapping):
        # DockerSpawner would replace its binds - the home volume among them - with a list.
        raise ContainerConfigError("extra_host_config binds must be a mapping {source: {bind, mode}}, not a list")
    refuse_docker_socket(list(extra.get("binds") or {}) + [_mount_source(m) for m in extra.get("mounts") or []])
    config: dict[str, Any] = {
        "shm_size": plan.shm_size,
        "pids_limit": plan.pids_limit,
        "restart_policy": {"Name": "no"},
        **extra,
        # gpuhub removes containers itself, once Docker confirms they stopped: the devices
        # come back on the engine's word, and a crashed server's exit code can still be read.
        "auto_remove": False,
    }
    if plan.mem_limit is not None:
        # Swap would let a container use far more than its memory limit.
        config["memswap_limit"] = plan.mem_limit
    # Hardening last, so nothing above can undo it.
    config.update(
        privileged=False,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        device_requests=device_requests(plan),
    )
    return config


def create_kwargs(plan: ContainerPlan, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The admin's `extra_create_kwargs` with gpuhub's user and labels, for DockerSpawner to merge
    over the create_container arguments it builds (image, name, command, environment, ports)."""
    if is_root(plan.user):
        raise ContainerConfigError(f"user containers must not run as root (user={plan.user!r})")
    extra = dict(copy.deepcopy(extra or {}))
    bad = sorted(k for k in extra if k in FORBIDDEN_CREATE_KWARGS)
    if bad:
        raise ContainerConfigError(f"extra_create_kwargs may not set {', '.join(bad)} (gpuhub sets these)")
    return {**extra, "user": plan.user, "labels": labels(plan)}


def _mount_source(mount: Any) -> str:
    if isinstance(mount, Mapping):
        return str(mount.get("Source") or mount.get("source") or "")
    return str(getattr(mount, "get", lambda *_: "")("Source") or "")
