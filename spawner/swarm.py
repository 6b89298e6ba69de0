"""gpuhub on Docker Swarm, the pure part: nodes, their devices, the engine-version guard, and
what gpuhub adds to a notebook *service*. No Docker, no NVML.

Swarm cannot give a service a GPU by UUID, and on Engine 20.10 requesting its generic
resources makes the manager kill and reschedule running GPU tasks (moby/moby#44378, fixed
in 23.0). So gpuhub's ledger stays the authority: it picks the node and the UUID, and the
service carries a placement constraint `node.id==…` plus `NVIDIA_VISIBLE_DEVICES=<uuid>`
for the nvidia runtime, which GPU nodes run as their default. Nodes *advertise* their
devices as generic resources (an advertisement nobody requests is harmless on 20.10), and
the manager hands that list to the hub, so the whole cluster is read from one manager.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import container, mig
from .devices import Device
from .inventory import Inventory, canonical_uuid

#: Generic-resource kinds a GPU node advertises: whole GPUs, and MIG slices per profile.
GPU_KIND = "NVIDIA-GPU"
MIG_KIND_PREFIX = "NVIDIA-MIG-"
#: Node label naming the GPU model of a node's whole GPUs (the advertisement has UUIDs only).
LABEL_GPU_MODEL = "gpuhub.gpu-model"
#: Service label: the node the ledger placed the server on.
LABEL_NODE = "gpuhub.node"
#: The first Engine whose Swarm may be asked for generic resources (moby/moby#44378).
GENERIC_REQUEST_MIN_ENGINE = (23, 0)
#: Task states in which a service's container may run, or be made to run, on its node.
TASK_HOLDING = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"})

HOME_SHARED = "shared-path"
HOME_NODE = "home-node"
HOME_MODES = (HOME_SHARED, HOME_NODE)


class SwarmConfigError(ValueError):
    """A Swarm setting or node would break gpuhub's guarantees (one line naming it)."""


@dataclass(frozen=True)
class NodeView:
    """What the manager says about one node."""

    id: str
    hostname: str = ""
    state: str = "ready"  # ready, down, unknown, disconnected
    availability: str = "active"  # active, pause, drain
    role: str = "worker"
    engine_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    addr: str = ""
    resources: tuple[tuple[str, str], ...] = ()  # advertised (kind, value) named generic resources

    @property
    def takes_servers(self) -> bool:
        """Ready and active: new servers may be placed here."""
        return self.state == "ready" and self.availability == "active"

    @property
    def name(self) -> str:
        return self.hostname or self.id[:12]


def node_view(info: Mapping[str, Any]) -> NodeView:
    """A NodeView from the Engine API's node object (GET /nodes)."""
    spec = info.get("Spec") or {}
    desc = info.get("Description") or {}
    status = info.get("Status") or {}
    found = []
    for item in (desc.get("Resources") or {}).get("GenericResources") or []:
        named = item.get("NamedResourceSpec") or {}
        if named.get("Kind") and named.get("Value"):
            found.append((str(named["Kind"]), str(named["Value"])))
    return NodeView(
        id=str(info.get("ID", "")),
        hostname=str(desc.get("Hostname") or ""),
        state=str(status.get("State") or "unknown").lower(),
        availability=str(spec.get("Availability") or "active").lower(),
        role=str(spec.get("Role") or "worker").lower(),
        engine_version=str((desc.get("Engine") or {}).get("EngineVersion") or ""),
        labels=dict(spec.get("Labels") or {}),
        addr=str(status.get("Addr") or ""),
        resources=tuple(found),
    )


def devices_of(node: NodeView) -> list[Device]:
    """The devices a node advertises, in the order it lists them (its NVML index order)."""
    model = node.labels.get(LABEL_GPU_MODEL, "") or "GPU"
    found: list[Device] = []
    gpus = slices = 0
    for kind, value in node.resources:
        uuid = canonical_uuid(value.strip())
        if kind == GPU_KIND:
            if not uuid.startswith("GPU-"):
                raise SwarmConfigError(f"node {node.name}: {kind}={value} is not a GPU-… UUID")
            found.append(Device(uuid, model=model, index=gpus, node=node.id))
            gpus += 1
        elif kind.upper().startswith(MIG_KIND_PREFIX):
            profile = kind[len(MIG_KIND_PREFIX) :].lower()
            if not mig.is_profile_name(profile) or not uuid.startswith("MIG-"):
                raise SwarmConfigError(f"node {node.name}: {kind}={value} is not a MIG-… UUID of a MIG profile")
            found.append(Device(uuid, model=model, mig_profile=profile, index=slices, parent_index=0, node=node.id))
            slices += 1
    return found


def inventory_of(nodes: Iterable[NodeView]) -> Inventory:
    """Every node's advertised devices, as one inventory (a UUID is unique cluster-wide)."""
    devices: list[Device] = []
    seen: dict[str, str] = {}
    notes = []
    for node in sorted(nodes, key=lambda n: n.hostname or n.id):
        try:
            mine = devices_of(node)
        except SwarmConfigError as e:
            notes.append(str(e))
            continue
        for d in mine:
            if d.uuid in seen:
                raise SwarmConfigError(f"device {d.uuid} is advertised by nodes {seen[d.uuid]} and {node.name}")
            seen[d.uuid] = node.name
        devices += mine
    if not devices:
        notes.append("no Swarm node advertises NVIDIA-GPU or NVIDIA-MIG-* resources; serving CPU profiles only")
    return Inventory(tuple(devices), "swarm", "; ".join(notes))


def engine_version(text: str) -> tuple[int, int]:
    """(major, minor) of an Engine version such as "20.10.24+dfsg1"; (0, 0) if unreadable."""
    m = re.match(r"^\s*v?(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_generic_request(request_generic: bool, nodes: Iterable[NodeView]) -> None:
    """Refuse to *request* generic resources on a cluster with any Engine below 23."""
    if not request_generic:
        return
    old = [
        f"{n.name} ({n.engine_version or 'unknown'})"
        for n in nodes
        if engine_version(n.engine_version) < GENERIC_REQUEST_MIN_ENGINE
    ]
    if old:
        raise SwarmConfigError(
            "swarm_request_generic_resources needs Docker Engine >= 23 on every node (moby/moby#44378 kills"
            f" and reschedules running GPU tasks below it); too old: {', '.join(old)}"
        )


def check_home_mode(mode: str, shared_root: str) -> None:
    if mode not in HOME_MODES:
        raise SwarmConfigError(f"swarm_home_mode must be one of {', '.join(HOME_MODES)}, not {mode!r}")
    if mode == HOME_SHARED and not shared_root.startswith("/"):
        raise SwarmConfigError(f"swarm_shared_home_root must be an absolute path, not {shared_root!r}")


@dataclass(frozen=True)
class ServicePlan:
    """gpuhub's part of one notebook service, every field already decided."""

    layer: container.ContainerPlan
    node: str = ""  # node id the ledger placed it on ("" for a CPU server that may go anywhere)
    home_mode: str = HOME_SHARED
    shared_root: str = ""
    shm_bytes: int = 0
    restart_attempts: int = 3
    generic: Mapping[str, int] = field(default_factory=dict)  # kind -> count, only with the guard passed


def home_source(plan: ServicePlan) -> str:
    """Where the user's home comes from: a folder under the shared root, or the node's named volume."""
    if plan.home_mode == HOME_SHARED:
        return f"{plan.shared_root.rstrip('/')}/{container.volume_safe(plan.layer.username)}"
    return plan.layer.home_volume


def mounts(plan: ServicePlan, extra_binds: Mapping[str, Mapping[str, str]] | None = None) -> list[dict[str, Any]]:
    """Service mounts: the home (bind or volume, never a volume name sent as a bind: dockerspawner#536),
    course material and the admin's volumes (absolute paths are binds, names are volumes), /dev/shm."""
    binds = {**container.binds(plan.layer), **(extra_binds or {})}
    home = home_source(plan)
    result = []
    for source, spec in binds.items():
        if source == plan.layer.home_volume:
            source = home
        result.append(
            {
                "Type": "bind" if source.startswith("/") else "volume",
                "Source": source,
                "Target": spec["bind"],
                "ReadOnly": spec.get("mode") == "ro",
            }
        )
    container.refuse_docker_socket([m["Source"] for m in result])
    if plan.shm_bytes:
        result.append({"Type": "tmpfs", "Target": "/dev/shm", "TmpfsOptions": {"SizeBytes": plan.shm_bytes}})
    return result


def constraints(plan: ServicePlan, admin: Sequence[str] = ()) -> list[str]:
    placed = [f"node.id=={plan.node}"] if plan.node else []
    return [*admin, *placed]


def service_labels(plan: ServicePlan) -> dict[str, str]:
    """Service labels (on the manager): the container's labels plus the node it was placed on."""
    return {**container.labels(plan.layer), LABEL_NODE: plan.node}


def task_resources(plan: ServicePlan, mem_limit: int | None, cpu_limit: float | None) -> dict[str, Any]:
    """TaskTemplate.Resources: limits (memory, CPU, processes) and, when allowed, a generic request."""
    limits: dict[str, Any] = {"Pids": plan.layer.pids_limit}
    if mem_limit:
        limits["MemoryBytes"] = int(mem_limit)
    if cpu_limit:
        limits["NanoCPUs"] = round(cpu_limit * 1e9)
    resources: dict[str, Any] = {"Limits": limits}
    if plan.generic:
        resources["Reservations"] = {
            "GenericResources": [
                {"DiscreteResourceSpec": {"Kind": kind, "Value": count}} for kind, count in plan.generic.items()
            ]
        }
    return resources


def generic_request(devices: Sequence[Device]) -> dict[str, int]:
    """The counts to request per kind for these devices (only used on Engine >= 23)."""
    counts: dict[str, int] = {}
    for d in devices:
        kind = f"{MIG_KIND_PREFIX}{d.mig_profile.upper()}" if d.is_mig else GPU_KIND
        counts[kind] = counts.get(kind, 0) + 1
    return counts


@dataclass(frozen=True)
class TaskView:
    """One task of a service, as the manager reports it."""

    id: str
    node: str
    state: str
    desired: str
    exit_code: int = 0
    message: str = ""
    updated: str = ""
    env: tuple[str, ...] = ()


def task_view(info: Mapping[str, Any]) -> TaskView:
    status = info.get("Status") or {}
    spec = ((info.get("Spec") or {}).get("ContainerSpec")) or {}
    return TaskView(
        id=str(info.get("ID", "")),
        node=str(info.get("NodeID") or ""),
        state=str(status.get("State") or "").lower(),
        desired=str(info.get("DesiredState") or "").lower(),
        exit_code=int(((status.get("ContainerStatus") or {}).get("ExitCode")) or 0),
        message=str(status.get("Err") or status.get("Message") or ""),
        updated=str(info.get("UpdatedAt") or ""),
        env=tuple(spec.get("Env") or ()),
    )


def service_state(tasks: Sequence[TaskView]) -> tuple[str, int, str]:
    """(container-like state, exit code, node) of a one-replica service from its tasks.

    Any task that may run code makes the service hold its devices: a task still `running` on a
    node that went down (desired `shutdown`) is not known to have stopped, and a replacement task
    Swarm is starting after a failure makes the service `restarting`. Otherwise the newest task
    says how it ended.
    """
    if not tasks:
        return "created", 0, ""  # just created: the orchestrator has not made its task yet
    newest = sorted(tasks, key=lambda t: task_time(t.updated))
    for t in reversed(newest):
        if t.state == "running":
            return "running", 0, t.node
    for t in reversed(newest):
        # Desired `ready`: Swarm made the replacement of a failed task and waits out the restart delay.
        if t.state in TASK_HOLDING and t.desired in ("running", "ready"):
            # An earlier task ended: Swarm is restarting the server on its node (a crash, the node's
            # dockerd restarted). It keeps its devices and counts as running, as a container in
            # Docker's `restarting` state does; after the last attempt no new task comes and it exits.
            restarting = any(o.state not in TASK_HOLDING for o in tasks)
            return ("restarting" if restarting else "created"), 0, t.node
    last = newest[-1]
    return "exited", last.exit_code or (0 if last.state == "complete" else 1), last.node


def task_time(text: str) -> tuple[str, int]:
    """A Swarm timestamp ("2026-11-27T10:00:05.5Z", Go drops trailing zeros) as a sortable key."""
    stamp, _, fraction = text.rstrip("Z").partition(".")
    digits = "".join(c for c in fraction if c.isdigit())[:9]
    return stamp, int(digits.ljust(9, "0") or 0)


#: Swarm refuses service names longer than this (they are DNS labels on the overlay).
SERVICE_NAME_MAX = 63


def service_name(base: str, suffix: str) -> str:
    """`base-suffix`, `base` cut so the whole stays a valid service name."""
    room = SERVICE_NAME_MAX - len(suffix) - 1
    return f"{base[:room].rstrip('-')}-{suffix}"


def env_devices(env: Iterable[str]) -> tuple[str, ...]:
    """The UUIDs a container spec's environment makes visible to the nvidia runtime."""
    for item in env:
        key, _, value = item.partition("=")
        if key == "NVIDIA_VISIBLE_DEVICES":
            return tuple(v for v in value.split(",") if v and v not in ("void", "none"))
    return ()
