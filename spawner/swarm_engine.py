"""The engine seam on Docker Swarm: a notebook is a one-replica *service*, read from one manager.

Same four calls as `engine.DockerEngine`, on services instead of containers: the
"container id" the GPU service keeps is the service id, and a service's state comes
from its tasks (`swarm.service_state`). Its devices are read twice, as on one host:
gpuhub's label, and the `NVIDIA_VISIBLE_DEVICES` its container spec hands the nvidia
runtime. `nodes()` adds what a single host does not have: nodes that come and go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from . import swarm
from .engine import ContainerView, DockerEngine, EngineError, devices_of

__all__ = ["SwarmEngine", "EngineError"]


class SwarmEngine(DockerEngine):
    """The seam on a Swarm manager's Engine API.

    Removing a service returns at once while its container is still stopping on its node.
    Devices must not go back before that container is gone, so the engine remembers each
    service's tasks and reports a removed service as `removing` while any of them may run.
    """

    #: A manager's event stream tells only of its own node's containers: no OOM incidents on Swarm yet.
    watch_oom = None

    def __init__(self, *args, stop_timeout: float = 30, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_timeout = stop_timeout
        self._tasks: dict[str, set[str]] = {}  # service id -> its task ids seen so far

    async def list(self, labels: Mapping[str, str]) -> list[ContainerView]:
        services = await self._call("services", filters={"label": [f"{k}={v}" for k, v in labels.items()]})
        if not services:
            return []
        tasks = await self._call("tasks", filters={"service": [s["ID"] for s in services]})
        by_service: dict[str, list] = {}
        for t in tasks:
            by_service.setdefault(t.get("ServiceID", ""), []).append(t)
        return [self._view(s, by_service.get(s["ID"], [])) for s in services]

    async def inspect(self, service_id: str) -> ContainerView | None:
        import docker.errors

        try:
            service = await self._call("inspect_service", service_id)
            tasks = await self._call("tasks", filters={"service": service["ID"]})
        except docker.errors.NotFound:
            if await self._still_running(service_id):
                return ContainerView(id=service_id, state="removing")
            self._tasks.pop(service_id, None)
            return None
        return self._view(service, tasks)

    async def stop(self, service_id: str, timeout: float) -> None:
        """Services have no stop: removing one stops its task (SIGTERM, then SIGKILL after its grace)."""

    async def remove(self, service_id: str) -> None:
        """Remove the service; return once none of its tasks may still run (EngineError if that takes
        longer than `stop_timeout`: the devices stay held until it is confirmed)."""
        import docker.errors

        try:
            tasks = await self._call("tasks", filters={"service": service_id})
            self._tasks.setdefault(service_id, set()).update(t["ID"] for t in tasks)
            await self._call("remove_service", service_id)
        except docker.errors.NotFound:
            pass
        deadline = asyncio.get_running_loop().time() + self.stop_timeout
        while await self._still_running(service_id):
            if asyncio.get_running_loop().time() > deadline:
                raise EngineError(f"service {service_id[:12]} is removed but its task is still running")
            await asyncio.sleep(0.5)
        try:
            await self._call("inspect_service", service_id)
        except docker.errors.NotFound:
            self._tasks.pop(service_id, None)
            return
        raise EngineError(f"docker service rm {service_id[:12]}: the service is still there")

    async def nodes(self) -> list[swarm.NodeView]:
        return [swarm.node_view(n) for n in await self._call("nodes")]

    async def _still_running(self, service_id: str) -> bool:
        """Whether any task this engine saw for the service may still run code on its node."""
        import docker.errors

        for task_id in list(self._tasks.get(service_id, ())):
            try:
                task = swarm.task_view(await self._call("inspect_task", task_id))
            except docker.errors.NotFound:
                self._tasks[service_id].discard(task_id)
                continue
            if task.state in swarm.TASK_HOLDING:
                return True
            self._tasks[service_id].discard(task_id)
        return False

    def _view(self, service: Mapping, tasks: list[Mapping]) -> ContainerView:
        self._tasks.setdefault(service["ID"], set()).update(t["ID"] for t in tasks)
        return _view(service, [swarm.task_view(t) for t in tasks])


def _view(service: Mapping, tasks: list[swarm.TaskView]) -> ContainerView:
    spec = service.get("Spec") or {}
    labels = dict(spec.get("Labels") or {})
    container_spec = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    env_devices = swarm.env_devices(container_spec.get("Env") or ())
    state, exit_code, node = swarm.service_state(tasks)
    limits = ((spec.get("TaskTemplate") or {}).get("Resources") or {}).get("Limits") or {}
    requests = [{"DeviceIDs": list(env_devices)}] if env_devices else []
    return ContainerView(
        id=service["ID"],
        labels=labels,
        devices=devices_of(labels, requests),
        state=state,
        exit_code=exit_code,
        created=str(service.get("CreatedAt") or ""),
        memory_limit=int(limits.get("MemoryBytes") or 0),
        node=node or labels.get(swarm.LABEL_NODE, ""),
    )


def read_nodes(client_kwargs: Mapping | None = None) -> list[swarm.NodeView]:
    """Blocking: the manager's nodes. SwarmConfigError (one line) if this engine is no Swarm manager."""
    import docker
    import requests
    from docker.utils import kwargs_from_env

    try:
        client = docker.APIClient(**{**kwargs_from_env(), "version": "auto", **(client_kwargs or {})})
        return [swarm.node_view(n) for n in client.nodes()]
    except (docker.errors.DockerException, requests.RequestException, OSError) as e:
        text = str(getattr(e, "explanation", "") or e).strip().splitlines()
        raise swarm.SwarmConfigError(
            f"GPUHUB_BACKEND=swarm needs the Docker API of a Swarm manager: {(text or ['no answer'])[0][:200]}"
        ) from None


def cluster_inventory(exclude=(), client_kwargs: Mapping | None = None):
    """Blocking: every node's advertised devices, less the excluded UUIDs."""
    from .inventory import Inventory, canonical_uuid

    found = swarm.inventory_of(read_nodes(client_kwargs))
    excluded = {canonical_uuid(u) for u in exclude}
    return Inventory(tuple(d for d in found.devices if d.uuid not in excluded), found.source, found.note)
