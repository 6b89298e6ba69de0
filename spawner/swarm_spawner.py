"""GPUSwarmSpawner: gpuhub on several GPU hosts, built on dockerspawner's SwarmSpawner.

Each server is a one-replica Swarm service. Everything gpuhub decides (profiles, quotas,
the queue, leases, courses, labels, hardening) is the same as on one host; what changes:

- The ledger spans every node. A lease's devices sit on one node; the service is pinned
  there with `node.id==…` and gets `NVIDIA_VISIBLE_DEVICES=<uuids>` for the nvidia runtime
  (the GPU nodes' default runtime). Swarm's own generic resources are never *requested*
  unless every Engine is >= 23 (`swarm.check_generic_request`).
- The engine seam reads services, tasks and nodes from the manager (`SwarmEngine`), so a
  hub restart rebuilds the whole cluster's ledger, and a node that goes down makes its
  leases stale (`GPUService._apply_nodes`).
- Homes follow the user: a folder under a shared root that every node mounts at the same
  path (NFS, CephFS), or a home node per user whose named volume stays there.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import replace

from dockerspawner import SwarmSpawner
from dockerspawner.dockerspawner import DockerSpawner
from tornado import web
from traitlets import Bool, Float, Integer, Unicode, default, validate

from . import admission, container, swarm
from .gpu_service import GPUService
from .sizes import parse_size
from .spawner import GPUDockerSpawner
from .swarm_engine import SwarmEngine, cluster_inventory, read_nodes

#: Task states the start waits through; any other state than running ends the start.
_TASK_WAITING = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready", "starting"})


class GPUSwarmSpawner(GPUDockerSpawner, SwarmSpawner):
    """GPUDockerSpawner's rules, with each server a Swarm service placed by gpuhub's ledger."""

    home_mode = Unicode(
        swarm.HOME_SHARED,
        help="""
        Where homes live on a Swarm. `shared-path`: a folder per user under `shared_home_root`, a
        filesystem every node mounts at the same path (NFS, CephFS), so a server may run on any
        node. `home-node`: the user's named volume on one node; the user's servers always run on
        that node, and the ledger hands them only that node's devices.
        """,
    ).tag(config=True)

    shared_home_root = Unicode(
        "/srv/gpuhub/homes",
        help="""
        `shared-path` mode: the shared folder holding one home folder per user. It must be
        mounted at this path on every node and in the hub's container (which creates the
        folders, owned by the notebook user).
        """,
    ).tag(config=True)

    homes_file = Unicode(
        "",
        help="`home-node` mode: the JSON file recording each user's home node (kept in the hub's data folder).",
    ).tag(config=True)

    request_generic_resources = Bool(
        False,
        help="""
        Also request the granted devices from Swarm as generic resources (a second, engine-level
        guard on their count). Needs Docker Engine >= 23 on every node: below it the manager
        kills and reschedules running GPU tasks (moby/moby#44378), so the hub refuses to start.
        """,
    ).tag(config=True)

    restart_attempts = Integer(
        3,
        help="""
        How often Swarm restarts a server's task that ended without gpuhub stopping it (a crash, a
        worker's dockerd restart, File > Shut Down in JupyterLab) on the same node with the same
        devices, before the server counts as stopped. Stop a server from the hub's page.
        """,
    ).tag(config=True)

    stop_grace = Float(10, help="Seconds a removed service's server gets between SIGTERM and SIGKILL.").tag(config=True)

    node_settle = Float(
        30,
        help="""
        Seconds a node back from `Down` must report to the manager before its devices are handed
        out again (its tasks' states are its own again, and reconcile has checked them).
        """,
    ).tag(config=True)

    @validate("home_mode")
    def _home_mode_known(self, proposal):
        swarm.check_home_mode(proposal["value"], self.shared_home_root or "/")
        return proposal["value"]

    @default("extra_endpoint_spec")
    def _default_endpoint_spec(self):
        # No IPVS needed: the hub reaches the task by its service name on the overlay network.
        return {"mode": "dnsrr"}

    @default("pull_policy")
    def _default_pull_policy(self):
        return "skip"  # each node pulls (or has loaded) the image itself

    # --- the engine seam and the cluster's inventory ---------------------------------------------------
    def _engine(self):
        return SwarmEngine(self.client_kwargs, threads=self.docker_threads, stop_timeout=self.stop_grace + 20)

    def _service_config(self):
        return replace(super()._service_config(), rediscover_interval=0, node_settle=self.node_settle)

    def load_inventory(self):
        """Blocking (the manager's node list): runs in a thread. Refuses a generic-resource request
        that an old Engine would turn into killed GPU tasks."""
        nodes = read_nodes(self.client_kwargs)
        swarm.check_generic_request(self.request_generic_resources, nodes)
        swarm.check_home_mode(self.home_mode, self.shared_home_root)
        return cluster_inventory(self.gpu_exclude, self.client_kwargs)

    async def _service_or_503(self) -> GPUService:
        try:
            return await self.service()
        except swarm.SwarmConfigError as e:
            self.log.error("gpuhub: %s", e)
            raise web.HTTPError(503, f"gpuhub Swarm configuration error: {e}") from None

    # --- homes that follow the user ---------------------------------------------------------------------
    def _home_node(self) -> str | None:
        if self.home_mode != swarm.HOME_NODE:
            return None
        return _read_homes(self.homes_file).get(self.user.name)

    def _pin(self, plan):
        """In home-node mode, a user with a home node gets only that node's devices."""
        node = self._home_node()
        if node and isinstance(plan, admission.SpawnPlan) and plan.request is not None:
            return replace(plan, request=replace(plan.request, node=node))
        return plan

    def _remember_home(self, node: str) -> None:
        if self.home_mode == swarm.HOME_NODE and node and self._home_node() != node and self.homes_file:
            homes = _read_homes(self.homes_file)
            homes[self.user.name] = node
            _write_json(self.homes_file, homes)

    async def _prepare_home(self) -> None:
        """`shared-path` mode: the user's folder exists, owned by the notebook user (a bind mount
        of a missing folder fails on the node)."""
        if self.home_mode != swarm.HOME_SHARED:
            return
        path = swarm.home_source(self._service_plan())
        uid, _, gid = self.notebook_user.partition(":")

        def make():
            os.makedirs(path, mode=0o750, exist_ok=True)
            if os.stat(path).st_uid != int(uid):
                os.chown(path, int(uid), int(gid or uid))

        try:
            await asyncio.get_running_loop().run_in_executor(None, make)
        except (OSError, ValueError) as e:
            raise web.HTTPError(
                500, f"gpuhub could not prepare the home folder {path} on the shared root ({e})"
            ) from None

    # --- the service ------------------------------------------------------------------------------------
    def _node_of_devices(self) -> str:
        svc = self._services.get(self.hub_id)
        if not self._devices or svc is None or svc.ledger is None:
            return ""
        nodes = {svc.ledger.devices[d].node for d in self._devices if d in svc.ledger.devices}
        if len(nodes) != 1:
            raise web.HTTPError(500, f"gpuhub: devices {','.join(self._devices)} are not on one node")
        return nodes.pop()

    def _service_plan(self) -> swarm.ServicePlan:
        node = self._node_of_devices() or self._home_node() or ""
        generic = {}
        if self.request_generic_resources and self._devices:
            svc = self._services[self.hub_id]
            generic = swarm.generic_request([svc.ledger.devices[d] for d in self._devices])
        return swarm.ServicePlan(
            layer=self.container_plan(),
            node=node,
            home_mode=self.home_mode,
            shared_root=self.shared_home_root,
            shm_bytes=parse_size(self.shm_size) if self.shm_size else 0,
            restart_attempts=self.restart_attempts,
            generic=generic,
        )

    async def create_object(self):
        """The notebook service: SwarmSpawner's specs and the admin's `extra_*_spec`, with gpuhub's
        layer (placement, devices, labels, home, limits, hardening) on top."""
        from docker.types import ContainerSpec, EndpointSpec, Placement, RestartPolicy, TaskTemplate

        try:
            plan = self._service_plan()
            admin_binds = DockerSpawner.volume_binds.fget(self)
            mounts = swarm.mounts(plan, admin_binds)
            if container.is_root(plan.layer.user):
                raise container.ContainerConfigError(f"user containers must not run as root (user={plan.layer.user!r})")
            bad = sorted(k for k in self.extra_container_spec if k in _FORBIDDEN_CONTAINER_SPEC)
            if bad:
                raise container.ContainerConfigError(f"extra_container_spec may not set {', '.join(bad)}")
        except container.ContainerConfigError as e:
            raise web.HTTPError(500, f"gpuhub configuration error: {e}") from None
        # A name of its own per start: the hub reaches the server by this name on the overlay, and
        # the overlay's DNS may still answer the previous start's address for a while.
        self.object_name = swarm.service_name(self._object_name_default(), secrets.token_hex(3))
        labels = swarm.service_labels(plan)
        container_spec = ContainerSpec(
            image=self.image,
            env=self.get_env(),
            args=await self.get_command(),
            **{
                **self.extra_container_spec,
                "user": plan.layer.user,
                "labels": container.labels(plan.layer),
                "mounts": mounts,
                "cap_drop": ["ALL"],
                "stop_grace_period": round(self.stop_grace * 1e9),
            },
        )
        placement = Placement(
            **{
                **self.extra_placement_spec,
                "constraints": swarm.constraints(plan, self.extra_placement_spec.get("constraints") or ()),
            }
        )
        task = TaskTemplate(
            container_spec=container_spec,
            resources=swarm.task_resources(plan, self.mem_limit, self.cpu_limit),
            networks=[self.network_name] if self.network_name else [],
            placement=placement,
            # `any`, not `on-failure`: a worker's dockerd stopping (an upgrade, `systemctl restart
            # docker`) ends the server with exit 0, which Swarm would count as done. gpuhub stops a
            # server by removing its service, which no restart policy undoes.
            restart_policy=RestartPolicy(condition="any", delay=5_000_000_000, max_attempts=plan.restart_attempts),
            **{k: v for k, v in self.extra_task_spec.items() if k not in ("container_spec", "resources", "placement")},
        )
        endpoint = EndpointSpec(**self.extra_endpoint_spec)
        return await self.docker(
            "create_service",
            task_template=task,
            endpoint_spec=endpoint,
            name=self.service_name,
            labels=labels,
        )

    async def _ensure_home_volume(self) -> bool:
        if self.home_size:  # settings.load refuses GPUHUB_HOME_SIZE with GPUHUB_BACKEND=swarm
            raise web.HTTPError(500, "gpuhub configuration error: home_size works on one Docker host, not on Swarm")
        return False

    async def _start_container(self, svc, ticket):
        await self._prepare_home()
        return await super()._start_container(svc, ticket)

    async def start_object(self):
        """Wait for the service's task to run; fail at once, with the node's reason, if it cannot."""
        started = time.monotonic()
        deadline = started + self.start_timeout
        delay = 0.5
        svc = self._services.get(self.hub_id)
        pinned = self._service_plan().node
        while time.monotonic() < deadline:
            tasks = [swarm.task_view(t) for t in await self.docker("tasks", filters={"service": self.service_id})]
            current = sorted(tasks, key=lambda t: swarm.task_time(t.updated))[-1:] or []
            if current and current[0].state == "running":
                self._remember_home(current[0].node)
                return
            if current and current[0].state not in _TASK_WAITING:
                task = current[0]
                raise web.HTTPError(500, f"Swarm could not start the server: task {task.state}: {task.message[:300]}")
            if pinned and svc is not None and time.monotonic() - started > 5:
                # Placed on a node that stopped taking servers meanwhile (paused, drained, down): its
                # task would wait for it forever. Fail now; the node's devices are blocked, so the
                # next start goes elsewhere.
                await svc.refresh_nodes()
                why = svc.node_refusal(pinned)
                if why:
                    raise web.HTTPError(503, f"{why} since your server was placed there; start it again")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 3)
        raise web.HTTPError(500, f"Swarm did not run the server's task within {self.start_timeout:.0f} s")

    async def post_start_exec(self):
        self.log.warning("gpuhub: post_start_cmd is not run on Swarm (services have no exec)")

    async def _log_course_sync(self) -> None:
        """On Swarm the course sync's lines stay in the server's own log (`docker service logs`)."""

    async def _fail_if_exited(self) -> None:
        svc = self._services.get(self.hub_id)
        view = await svc.engine.inspect(self.object_id) if svc else None
        if view is None:
            raise web.HTTPError(500, "The server's service disappeared while starting")
        if not view.may_hold_devices:
            raise web.HTTPError(500, f"The server's task ended with code {view.exit_code} while starting")

    def _lease_granted(self, lease) -> None:
        super()._lease_granted(lease)
        svc = self._services.get(self.hub_id)
        if svc is not None and lease is not None:
            self._remember_home(self._node_of_devices())


_FORBIDDEN_CONTAINER_SPEC = ("user", "labels", "env", "mounts", "cap_add", "cap_drop", "privileges", "isolation")


def _read_homes(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            data = json.load(f)
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
