"""GPUDockerSpawner: glue between JupyterHub, the pure gpuhub modules and Docker.

Every decision about the container is made by `spawner.container`; this class
collects settings, calls Docker off the event loop and waits for the server.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone

import docker.errors
from dockerspawner import DockerSpawner
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Dict, Float, Integer, List, Unicode, Union, default, validate

from . import admission, container, culling, form, gpu_config, inventory, operations, profiles, quota
from .engine import DockerEngine, EngineError
from .gpu_service import GPUService, ServiceBusy, ServiceConfig, Ticket, owner_key
from .sizes import parse_size

#: Words in Docker's answer to a failed start that blame the GPU path rather than the image or config.
DEVICE_ERRORS = ("nvidia", "nvml", "gpu", "device error", "cuda")


async def _evaluated(value, spawner):
    """A DockerSpawner trait value: plain, or a callable of the spawner, possibly async."""
    if callable(value):
        value = value(spawner)
    if inspect.isawaitable(value):
        value = await value
    return value or {}


#: A starting server is checked again after this share of the time it has taken so far.
READY_POLL_SHARE = 0.05


def ready_poll_wait(waited: float, first: float, most: float) -> float:
    """Seconds until the next check that a starting server answers, `waited` seconds into its start.

    Short while an ordinary start may be about to answer; later a share of the time waited, so a
    server is let in at most 5% later than it answered while a slow start costs the hub few checks.
    """
    return min(most, max(first, waited * READY_POLL_SHARE))


def _template_literal(value):
    """Braces doubled, so DockerSpawner's template rendering leaves the value exactly as it is."""
    if isinstance(value, str):
        return value.replace("{", "{{").replace("}", "}}")
    if isinstance(value, dict):
        return {_template_literal(k): _template_literal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_template_literal(v) for v in value)
    return value


def _reason(e: Exception) -> str:
    """Docker's one-line reason, without the "create NAME: " its volume errors start with."""
    text = str(getattr(e, "explanation", "") or e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line.split(": ", 1)[1] if line.startswith("create ") and ": " in line else line


def engine_refuses_home_size(size: str) -> str:
    """At hub start: the one-line refusal when the Docker Engine cannot limit volumes to `size`, else "".
    Asks by creating (and removing) a volume of that size under a name of its own; an engine that does
    not answer is not refused here (each start asks again)."""
    import secrets

    from docker.utils import kwargs_from_env

    name = f"gpuhub-home-size-probe-{secrets.token_hex(6)}"
    try:
        client = docker.APIClient(**{**kwargs_from_env(), "version": "auto", "timeout": 30})
        client.create_volume(**container.home_volume_create(name, size))
    except docker.errors.APIError as e:
        return container.home_size_refusal(size, _reason(e)) if e.is_client_error() else ""
    except Exception:  # noqa: BLE001 - no engine, no answer: the starts will say
        return ""
    try:
        client.remove_volume(name)
    except docker.errors.DockerException:
        pass
    return ""


#: Stops by someone other than the owner, as the hub page words them (spawner/stop_reasons.py).
STOPPED_BY = {
    "admin": "an admin, lab admin or instructor stopped it",
    "idle": "it had no activity for the hub's idle timeout",
}


class GPUDockerSpawner(DockerSpawner):
    """Spawn each user's server in a hardened Docker container with a persistent home."""

    home_volume = Unicode(
        "jupyterhub-user-{username}",
        help="""
        Name template of the Docker volume mounted as each user's home.

        One volume per user (shared by the user's named servers), so files survive
        server stop, container removal, hub restarts and image upgrades. Expands
        the same fields as `DockerSpawner.volumes`; `{username}` keeps letters,
        digits, '.' and '-' as they are and writes other characters as `_xx`.
        """,
    ).tag(config=True)

    home_path = Unicode(
        container.DEFAULT_HOME_PATH,
        help="Where the home volume is mounted in the container; the image's HOME.",
    ).tag(config=True)

    notebook_user = Unicode(
        container.DEFAULT_USER,
        help="""
        `uid:gid` the notebook server runs as. Never root: user containers run
        unprivileged, with every capability dropped and no-new-privileges set.
        """,
    ).tag(config=True)

    @validate("notebook_user")
    def _notebook_user_not_root(self, proposal):
        if container.is_root(proposal.value):
            raise ValueError(f"GPUDockerSpawner.notebook_user must not be root, got {proposal.value!r}")
        return proposal.value

    shm_size = Unicode(
        container.DEFAULT_SHM_SIZE,
        help="""
        Size of /dev/shm in user containers. Docker's default (64M) makes PyTorch
        DataLoader workers (`num_workers > 0`) die with "bus error".
        """,
    ).tag(config=True)

    @validate("shm_size")
    def _shm_size_is_a_size(self, proposal):
        try:
            parse_size(proposal.value)
        except ValueError:
            raise ValueError(f"GPUDockerSpawner.shm_size={proposal.value!r} is not a size such as 2G") from None
        return proposal.value

    pids_limit = Integer(
        container.DEFAULT_PIDS_LIMIT,
        min=64,
        help="Most processes and threads a user container may run (a fork bomb stops here).",
    ).tag(config=True)

    home_size = Unicode(
        "",
        help="""
        Most each user's home volume may hold, e.g. `10G` (K, M, G, T are powers of 1024); empty:
        no limit. A missing home volume is created with the local driver's `size` option before
        the container, and Docker enforces it with an XFS project quota: writes past it fail with
        "No space left on device" in that user's servers only. Needs Docker's volumes folder
        (`<data-root>/volumes`) on XFS mounted with `prjquota`; on any other engine the start fails
        with one line saying so. A home volume that already exists keeps what it was made with (no
        limit, or another size): the hub log says so at each start of its user. One Docker host
        only, not GPUSwarmSpawner.
        """,
    ).tag(config=True)

    @validate("home_size")
    def _home_size_is_a_size(self, proposal):
        try:
            return container.home_size(proposal.value)
        except ValueError as e:
            raise ValueError(f"GPUDockerSpawner.home_size={proposal.value!r} is invalid: {e}") from None

    hub_id = Unicode(
        "gpuhub",
        help="""
        Value of the `gpuhub.hub` label on this hub's containers, so several hubs
        can share one Docker engine and each finds only its own containers.
        """,
    ).tag(config=True)

    docker_threads = Integer(
        16,
        min=1,
        help="""
        Docker API calls that may run at once, in a thread pool shared by all
        spawners. Stock DockerSpawner uses one thread, which queues a whole
        class's starts behind each other at 9:00.
        """,
    ).tag(config=True)

    ready_poll_interval = Float(
        0.2,
        min=0.02,
        help="""
        Seconds between the first checks that a starting server answers HTTP.
        JupyterHub's own check backs off to 5 s between tries; checking this
        often lets a student in as soon as an ordinary start (a few seconds) is up.
        A start that takes longer is checked less often: the wait between checks
        grows to 1/20 of the time waited so far (a server is let in at most 5%
        later than it answered), up to `ready_poll_max_interval`.
        """,
    ).tag(config=True)

    ready_poll_max_interval = Float(
        2.0,
        min=0.02,
        help="""
        The longest wait between two checks that a starting server answers HTTP.
        A whole class starting at once on a small host takes minutes to be ready;
        checking each of 60 servers every 0.2 s meanwhile costs the hub ~300
        requests a second, CPU the servers need to start. A server whose
        container exits while starting is still noticed within 2 s.
        """,
    ).tag(config=True)

    profile_list = List(
        Dict(),
        help="""
        What users may choose, in KubeSpawner's `profile_list` shape. Each entry:
        `slug`, `display_name`, optional `description`, `default`, `gpu`
        (`{"count": 1, "mig_profile": "1g.10gb"}` or `{"count": 2, "model": "NVIDIA A100-SXM4-80GB"}`),
        `mem_limit`, `cpu_limit`, `image`. Validated when the hub starts: a duplicate
        slug, an unknown MIG profile or more devices than the host has stop the hub
        with one line. Empty: one CPU-only profile.
        """,
    ).tag(config=True)

    gpus = List(
        Union([Unicode(), Dict()]),
        help="""
        Static GPU inventory, for hosts where the hub cannot load NVML. Each entry
        is a UUID (`"GPU-…"`) or a dict with `uuid`, `model`, `memory_mib` and, for
        MIG slices, `mig_profile` and `parent`. Empty (default): ask NVML.
        """,
    ).tag(config=True)

    gpu_exclude = List(
        Unicode(),
        help="UUIDs of GPUs (or MIG devices) reserved for other use; never handed to users.",
    ).tag(config=True)

    gpu_wait_timeout = Float(
        600,
        min=0,
        help="""
        Seconds a spawn may wait in the GPU queue before it fails with a clear
        message. Keep `start_timeout` larger than this plus a normal start.
        """,
    ).tag(config=True)

    queue_abandon_after = Float(
        60,
        min=5,
        help="""
        A spawn started from the browser leaves the GPU queue when no browser has
        watched its progress page for this many seconds (the student left).
        Spawns started through the REST API keep their place.
        """,
    ).tag(config=True)

    reconcile_interval = Float(
        60,
        min=0,
        help="""
        Seconds between comparisons of the GPU ledger with Docker. Leases whose
        container Docker no longer has (404) end; containers using devices that no
        lease accounts for are adopted or their devices quarantined; orphans are
        found. 0 turns it off (not recommended).
        """,
    ).tag(config=True)

    rediscover_interval = Float(
        60,
        min=0,
        help="""
        Seconds between NVML re-discoveries (in a thread). A GPU that NVML no longer
        lists, or whose NVML calls fail, is quarantined until it is back. Ignored
        with a static inventory (`gpus`). 0 turns it off.
        """,
    ).tag(config=True)

    orphan_grace = Float(
        300,
        min=0,
        help="""
        Seconds a container labelled for this hub may go unclaimed by any server
        before gpuhub removes it (its devices come back once Docker confirms it is
        gone). Orphans come from starts that JupyterHub gave up on or servers it
        forgot. Raised to three poll intervals if smaller; 0 (or
        `Spawner.poll_interval = 0`) turns orphan removal off.
        """,
    ).tag(config=True)

    start_failures_to_quarantine = Integer(
        3,
        min=1,
        help="""
        A device on which Docker failed to start this many servers in a row, with
        an error from the GPU path (nvidia-container-cli, the runtime hook), is
        quarantined (handed to nobody) until the hub restarts.
        """,
    ).tag(config=True)

    queue_file = Unicode(
        "",
        help="""
        File the GPU wait queue is saved to, so that a hub restart keeps every
        waiting server's place and priority. Empty: the queue lives in memory only.
        """,
    ).tag(config=True)

    queue_resume_timeout = Float(
        300,
        min=0,
        help="""
        After a hub restart, seconds a restored queue place (or the devices it was
        granted meanwhile) is kept for its student to start again.
        """,
    ).tag(config=True)

    options_form_template = Unicode(
        form.DEFAULT_TEMPLATE,
        help="""
        Jinja template of the spawn form (the profile choice with live availability and
        the queue hint). Looked up in `options_form_template_paths` first, then in the
        templates gpuhub ships (`spawner/templates/`). Ignored when `options_form` is set.
        """,
    ).tag(config=True)

    options_form_template_paths = List(
        Unicode(),
        help="""
        Directories searched, in order, for `options_form_template` before gpuhub's own
        templates: put a `gpuhub_form.html` in one to replace the spawn form. Its
        variables are documented at the top of `spawner/templates/gpuhub_form.html`.
        """,
    ).tag(config=True)

    telemetry_interval = Float(
        10,
        min=0,
        help="""
        Seconds between GPU telemetry samples (NVML, in a thread of its own). Each sample
        updates the device metrics on /hub/metrics and drives GPU-idle culling, time
        limits and budget stops. 0 turns telemetry, and with it GPU-idle culling, off; time
        limits, idle timeouts, budgets and usage heartbeats are then checked every minute.
        """,
    ).tag(config=True)

    cull_warning = Float(
        300,
        min=0,
        help="""
        Seconds before gpuhub stops a server for a profile limit (GPU idle, time limit,
        idle) or a used-up GPU-hour budget that its user is warned, in JupyterLab and on
        the hub's home page. A start whose budget would not last this long is refused.
        """,
    ).tag(config=True)

    usage_db_url = Unicode(
        "",
        help="""
        Database of the GPU-hour usage records (table `gpuhub_usage`): the hub's own
        `JupyterHub.db_url`, so records follow the hub's database choice. Empty: no
        records, and GPU-hour budgets cannot be enforced.
        """,
    ).tag(config=True)

    hub_api_url = Unicode(
        "",
        help="""
        The hub's REST API as the hub itself reaches it (e.g. http://127.0.0.1:8081/hub/api).
        gpuhub stops servers for limits and budgets through it, as an admin would, so
        the hub's own records of the server stay right. Empty: limits only warn.
        """,
    ).tag(config=True)

    hub_api_token = Unicode(
        "",
        help="Token (of a service with the delete:servers scope) gpuhub stops servers with.",
    ).tag(config=True)

    @default("remove")
    def _default_remove(self):
        # Containers are disposable; the home volume carries the state.
        return True

    @default("client_kwargs")
    def _default_client_kwargs(self):
        return {"max_pool_size": self.docker_threads}

    _pools: dict[int, ThreadPoolExecutor] = {}

    @property
    def executor(self):
        """One thread pool per size, shared by every spawner of this hub."""
        pool = self._pools.get(self.docker_threads)
        if pool is None:
            pool = self._pools[self.docker_threads] = ThreadPoolExecutor(
                self.docker_threads, thread_name_prefix="gpuhub-docker"
            )
        return pool

    # --- The container: DockerSpawner builds it; gpuhub's layer goes in through its traits ------
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The configured values, before any start (or JupyterHub's apply_user_options) changes them.
        self._configured = {n: getattr(self, n) for n in ("image", "mem_limit", "cpu_limit")}

    def _configured_value(self, name: str):
        """A trait's configured value; the per-start values below replace it for one start."""
        return self._configured[name]

    def _apply_plan(self, plan: admission.SpawnPlan) -> None:
        """Put this start's image and limits on the traits DockerSpawner's create_object reads, as
        DockerSpawner does with its `image` option and KubeSpawner with a profile's overrides."""
        mem_limit = self._configured_value("mem_limit")
        cpu_limit = self._configured_value("cpu_limit")
        self.image = plan.image
        self.mem_limit = plan.profile.mem_limit or mem_limit
        self.cpu_limit = plan.profile.cpu_limit or cpu_limit

    def container_plan(self) -> container.ContainerPlan:
        """gpuhub's part of this start's container (outside a start: a CPU server's)."""
        plan = self._plan
        return container.ContainerPlan(
            hub_id=self.hub_id,
            username=self.user.name,
            server_name=self.name or "",
            home_volume=self._home_volume_name(),
            home_path=self.home_path,
            user=self.notebook_user,
            mem_limit=self.mem_limit,
            shm_size=self.shm_size,
            pids_limit=self.pids_limit,
            devices=self._devices,
            charged_to=plan.charged_to if plan else "",
            lease=(self._ticket.lease_id or "") if self._ticket else "",
            profile=plan.profile.slug if plan else "",
            binds=plan.courses.binds if plan else {},
        )

    def _home_volume_name(self) -> str:
        return self.home_volume.format(
            **{**self.template_namespace(), "username": container.volume_safe(self.user.name)}
        )

    @property
    def volume_binds(self):
        # The home volume and course material join the admin's `volumes`/`read_only_volumes`,
        # so DockerSpawner both declares and binds them; the whole set is checked.
        binds = {**super().volume_binds, **container.binds(self.container_plan())}
        container.refuse_docker_socket(binds)
        return binds

    async def create_object(self):
        """DockerSpawner's create_object, with gpuhub's layer merged over the admin's
        `extra_create_kwargs` / `extra_host_config` (callable, awaitable or plain, as upstream)."""
        layer = self.container_plan()
        admin_create, admin_host = self.extra_create_kwargs, self.extra_host_config

        # DockerSpawner renders templates ({username}, ...) in what these return: the admin's values
        # need that; gpuhub's labels (user names may hold braces) are made template-proof first.
        async def create_kwargs(spawner):
            kwargs = container.create_kwargs(layer, await _evaluated(admin_create, spawner))
            kwargs["labels"] = _template_literal(kwargs["labels"])
            return kwargs

        async def host_config(spawner):
            return container.host_config(layer, await _evaluated(admin_host, spawner))

        try:
            container.refuse_docker_socket([m.get("source", "") for m in self.mounts])
            self.extra_create_kwargs, self.extra_host_config = create_kwargs, host_config
            return await super().create_object()
        except container.ContainerConfigError as e:
            raise web.HTTPError(500, f"gpuhub configuration error: {e}") from None
        finally:
            self.extra_create_kwargs, self.extra_host_config = admin_create, admin_host

    async def pull_image(self, image):
        try:
            await super().pull_image(image)
        except docker.errors.DockerException as e:
            reason = str(getattr(e, "explanation", "") or e).splitlines()[0][:200]
            raise web.HTTPError(
                500,
                f"Notebook image {image!r} is not on this Docker host and could not be pulled"
                f" ({reason}). An admin can build it with `make images`.",
            ) from None

    # --- the home's size limit (GPUHUB_HOME_SIZE) ---------------------------------------------------
    _home_limited = False  # this start's home volume carries home_size (then checked once it runs)

    async def _ensure_home_volume(self) -> bool:
        """With a home_size, create a missing home volume with it (before anything is queued or
        created); say in the hub log when an existing one does not carry it. Whether it does."""
        if not self.home_size:
            return False
        name = self._home_volume_name()
        try:
            volume = await self.docker("inspect_volume", name)
        except docker.errors.NotFound:
            volume = None
        except docker.errors.DockerException as e:
            raise web.HTTPError(503, f"Docker did not answer about home volume {name} ({_reason(e)})") from None
        if volume is None:
            try:  # a second start racing this one gets the same volume back
                volume = await self.docker("create_volume", **container.home_volume_create(name, self.home_size))
            except docker.errors.APIError as e:
                if e.is_client_error():  # "quota size requested but no quota support"
                    line = container.home_size_refusal(self.home_size, _reason(e))
                    self.log.error("gpuhub: %s: %s", self.owner, line)
                    raise web.HTTPError(500, line) from None
                raise web.HTTPError(503, f"Docker could not create home volume {name} ({_reason(e)})") from None
            except docker.errors.DockerException as e:
                raise web.HTTPError(503, f"Docker could not create home volume {name} ({_reason(e)})") from None
            self.log.info("gpuhub: %s: created home volume %s limited to %s", self.owner, name, self.home_size)
        problem = container.home_volume_problem(volume, self.home_size)
        if problem:
            self.log.warning("gpuhub: %s: %s", self.owner, problem)
        return not problem

    async def _check_home_limit(self) -> None:
        """Whether the running server's home really is limited (moby/moby#43891: a volume name removed
        and made again gets no quota until dockerd restarts, though its options still say `size`)."""
        try:
            run = await self.docker(
                "exec_create",
                self.container_id,
                [*container.HOME_STATFS_COMMAND, self.home_path],
                user=self.notebook_user,
            )
            output = await asyncio.wait_for(self.docker("exec_start", run["Id"]), 10)
        except (docker.errors.DockerException, asyncio.TimeoutError, OSError) as e:
            self.log.debug("gpuhub: %s: could not check the home's limit (%s)", self.owner, e)
            return
        enforced = container.home_limit_enforced(output.decode(errors="replace"), self.home_size)
        if enforced is False:
            self.log.error(
                "gpuhub: %s: home volume %s says size=%s but Docker does not enforce it: the volume was removed"
                " and made again under the same name since dockerd started (moby/moby#43891); restart dockerd"
                " (docs/admin.md: Home size limits)",
                self.owner,
                self._home_volume_name(),
                self.home_size,
            )

    # --- GPUs: admission, leases, the queue ----------------------------------------------------
    _plan: admission.SpawnPlan | None = None
    _ticket: Ticket | None = None
    _devices: tuple[str, ...] = ()
    _watchers = 0
    _services: dict[str, GPUService] = {}

    @property
    def owner(self) -> str:
        return owner_key(self.user.name, self.name or "")

    def load_inventory(self) -> inventory.Inventory:
        """Blocking (NVML): runs in a thread. The first call reuses what config load discovered."""
        found = gpu_config.take_loaded(self.gpus, self.gpu_exclude)
        if found is not None:
            return found
        if self.gpus:
            return inventory.from_static(self.gpus, self.gpu_exclude)
        return inventory.discover(exclude=self.gpu_exclude)

    async def service(self) -> GPUService:
        """The hub's one GPU service (built on first use, then shared by every spawner)."""
        svc = self._services.get(self.hub_id)
        if svc is None:
            svc = self._services[self.hub_id] = GPUService(
                self._service_config(), self._engine(), self.load_inventory, log=self.log, ops=self._operations
            )
        await svc.ready()
        return svc

    def _service_config(self) -> ServiceConfig:
        grace = self.orphan_grace
        if self.poll_interval <= 0:
            self.log.warning("gpuhub: Spawner.poll_interval is 0, so orphan containers are never removed")
            grace = 0
        elif grace > 0:
            grace = max(grace, 3 * self.poll_interval)
        return ServiceConfig(
            hub_id=self.hub_id,
            queue_file=self.queue_file,
            reconcile_interval=self.reconcile_interval,
            rediscover_interval=0 if self.gpus else self.rediscover_interval,
            orphan_grace=grace,
            start_failures_to_quarantine=self.start_failures_to_quarantine,
            queue_resume_timeout=self.queue_resume_timeout,
        )

    def _engine(self):
        """The engine seam the GPU service talks to: this Docker host."""
        return DockerEngine(self.client_kwargs, threads=self.docker_threads)

    def _pin(self, plan):
        """Where a backend narrows the devices a plan may get (a Swarm user's home node)."""
        return plan

    def _lease_granted(self, lease) -> None:
        """The start got its devices (a backend may record where they are)."""

    def _operations(self, svc: GPUService) -> operations.Operations:
        """Telemetry, usage records, budgets and culling for the hub's GPU service."""
        from .telemetry import Sampler
        from .usage import UsageStore

        store = UsageStore(self.usage_db_url, self.hub_id) if self.usage_db_url else None
        stopper = (
            operations.hub_api_stopper(self.hub_api_url, self.hub_api_token, self.log)
            if self.hub_api_url and self.hub_api_token
            else None
        )
        db = self.user.db
        config = quota.GPUQuota(parent=self)

        def quotas_of_group(user: str) -> dict:
            # Budgets change at runtime (group properties): read them as they are now.
            from jupyterhub import orm

            found_user = orm.User.find(db, user)
            groups = {g.name: g.properties or {} for g in (found_user.groups if found_user else [])}
            found, _ = quota.quotas_for(
                config.default, config.groups, {n: p.get(quota.PROPERTY) for n, p in groups.items()}
            )
            return {q.source: q for q in found}

        return operations.Operations(
            devices=svc._devices,
            leases=svc._leases,
            sampler=Sampler() if self.telemetry_interval > 0 else None,
            store=store,
            stop_server=stopper,
            quotas=quotas_of_group,
            interval=self.telemetry_interval,
            warning=self.cull_warning,
            log=self.log,
        )

    async def _service_or_503(self) -> GPUService:
        try:
            return await self.service()
        except Exception as e:
            self.log.error("gpuhub: GPU bookkeeping is unavailable: %s", e)
            raise web.HTTPError(503, f"GPU bookkeeping is unavailable ({e}); try again shortly") from None

    def _groups(self) -> dict:
        return {g.name: g.properties or {} for g in self.user.groups}

    async def get_options_form(self):
        if self.options_form:
            return await super().get_options_form()
        svc = await self._service_or_503()
        choices = profiles.parse(self.profile_list, svc.inventory)
        config = quota.GPUQuota(parent=self)
        allowed = admission.offered(choices, config.default, config.groups, self._groups(), svc.usable)
        images = self._get_allowed_images()
        images = [] if images == "*" else list(images)
        if (len(choices) <= 1 or not allowed) and len(images) <= 1:
            return ""
        default = profiles.choose(allowed, None).slug if allowed else None
        rows = []
        for p in allowed:
            gpu = None
            if p.gpu:
                free, total = svc.availability(p.gpu)
                gpu = {"label": p.gpu.label, "free": free, "total": total, "waiting": svc.waiting_for(p.gpu)}
            rows.append(
                {
                    "slug": p.slug,
                    "display_name": p.display_name,
                    "description": p.description,
                    "checked": p.slug == default,
                    "gpu": gpu,
                }
            )
        try:
            return form.render(
                self.options_form_template,
                self.options_form_template_paths,
                profiles=rows,
                images=images if len(images) > 1 else [],
                user=self.user.name,
            )
        except form.FormTemplateError as e:
            self.log.error("gpuhub: %s", e)
            raise web.HTTPError(500, f"gpuhub configuration error: {e}") from None

    @default("options_from_form")
    def _options_from_form_default(self):
        def options_from_form(formdata):
            # Only what the form sent: no profile means the default (or the course's) profile.
            return {key: formdata[key][0] for key in ("profile", "image") if formdata.get(key)}

        return options_from_form

    def _from_browser(self) -> bool:
        """Started from a browser page (it may be closed), not through the REST API."""
        from jupyterhub.apihandlers.base import APIHandler

        return self.handler is not None and not isinstance(self.handler, APIHandler)

    async def start(self):
        from_browser = self._from_browser()
        svc = await self._service_or_503()
        try:
            await svc.clear_previous(self.owner, self.user.name, self.name or "")
        except ServiceBusy as e:
            raise web.HTTPError(409, str(e)) from None
        await svc.refresh_nodes()  # Swarm: a node paused a moment ago gets no new server
        self._home_limited = await self._ensure_home_volume()
        choices = profiles.parse(self.profile_list, svc.inventory)
        config = quota.GPUQuota(parent=self)
        groups = self._groups()
        options = dict(self.user_options or {})
        # DockerSpawner's own image choice: refused (400) unless the admin set `allowed_images`.
        image = await self.check_allowed(options.pop("image")) if "image" in options else None

        # GPU-hour budgets, from the usage records (in their thread) before the one-step admission.
        user_quotas, _ = quota.quotas_for(
            config.default, config.groups, {n: (p or {}).get(quota.PROPERTY) for n, p in groups.items()}
        )
        budgeted = [q for q in user_quotas if q.budgets]
        exhausted = {}
        if budgeted:
            wanted = admission.devices_wanted(
                username=self.user.name,
                user_options=options,
                profile_list=choices,
                user_groups=groups,
                home_path=self.home_path,
            )
            exhausted = await svc.ops.exhausted(self.user.name, budgeted, wanted)

        def admit(usage: admission.Usage):
            return self._pin(
                admission.admit(
                    username=self.user.name,
                    user_options=options,
                    profile_list=choices,
                    default_image=self._configured_value("image"),
                    home_path=self.home_path,
                    image=image,
                    quota_default=config.default,
                    quota_groups=config.groups,
                    user_groups=groups,
                    usage=usage,
                    usable=svc.usable,
                    exhausted=exhausted,
                )
            )

        ticket = svc.reserve(self.owner, self.user.name, admit)
        if isinstance(ticket, admission.Refusal):
            raise web.HTTPError(ticket.status, ticket.message)
        for problem in ticket.plan.problems:
            self.log.warning("gpuhub: %s", problem)
        self._plan, self._ticket, self._devices = ticket.plan, ticket, ()
        self._apply_plan(ticket.plan)
        async with svc.starting(ticket):
            if ticket.plan.request is not None:
                lease = await self._wait_for_lease(svc, ticket, from_browser)
                self._devices = lease.devices
                self._lease_granted(lease)
            ip, port = await self._start_container(svc, ticket)
            await self._wait_until_answering(ip, port)
            await self._log_course_sync()
            if self._home_limited:
                await self._check_home_limit()
        self._started = {"profile": ticket.plan.profile.slug, "at": time.time(), "charged_to": ticket.plan.charged_to}
        self._last_stop = None
        self._watch(svc)
        return ip, port

    # --- limits, culling and what the user is told -------------------------------------------------
    _started: dict | None = None  # profile, start time and quota of the running server (in the state)
    _last_stop: dict | None = None  # when and why gpuhub (or the kernel) stopped it last (in the state)

    def _watch(self, svc: GPUService) -> None:
        """Let the GPU service watch this running server's limits and budget."""
        started = self._started or {}
        try:
            choices = {p.slug: p for p in profiles.parse(self.profile_list, svc.inventory)}
        except profiles.ProfileError as e:  # the hub checked them at start; a config reload broke them
            self.log.error("gpuhub: %s: profile limits not applied: %s", self.owner, e)
            choices = {}
        profile = choices.get(started.get("profile", ""))
        svc.ops.watch(
            operations.ServerInfo(
                owner=self.owner,
                profile=started.get("profile", ""),
                limits=profile.limits if profile else culling.Limits(),
                started=float(started.get("at", time.time())),
                charged_to=started.get("charged_to", ""),
                devices=tuple(self._devices),
                last_activity=self._last_activity,
            )
        )

    def _last_activity(self) -> float | None:
        orm_spawner = self.orm_spawner
        last = orm_spawner.last_activity if orm_spawner is not None else None
        return last.replace(tzinfo=timezone.utc).timestamp() if last is not None else None

    def _stopped(self, reason: str, message: str) -> None:
        self._last_stop = {"at": time.time(), "reason": reason, "message": message}

    @property
    def gpuhub_last_stop(self) -> str:
        """Why gpuhub stopped this server last (the hub's pages show it while it is stopped)."""
        return (self._last_stop or {}).get("message", "") if not self.active else ""

    @property
    def gpuhub_notice(self) -> str:
        """The stop warning of this running server, else what happened in it lately (a process
        OOM-killed); the hub's home page shows it."""
        svc = self._services.get(self.hub_id)
        if svc is None or not self.active:
            return ""
        found = svc.user_notice(self.owner, self.object_id or "")
        return found.message if found is not None else ""

    async def _start_container(self, svc: GPUService, ticket: Ticket) -> tuple[str, int]:
        """Create and start the container for this plan; the lease is bound the moment it exists."""
        await self.pull_image(self.image)
        obj = await self.create_object()
        self.object_id = obj[self.object_id_key]  # no await before binding: a cancelled start still finds it
        svc.bind(ticket, self.object_id)
        self.log.info("gpuhub: %s: created %s (%s)", self.owner, self.object_id[:12], ",".join(self._devices) or "CPU")
        try:
            await self.start_object()
        except docker.errors.APIError as e:
            reason = str(e.explanation or e).splitlines()[0][:300]
            # Only the GPU path's own errors count against the device (nvidia-container-cli and
            # the runtime hook say so); a broken image or bind mount is not the GPU's fault.
            ticket.device_failure = bool(self._devices) and any(w in reason.lower() for w in DEVICE_ERRORS)
            raise web.HTTPError(500, f"Docker could not start the server container: {reason}") from None
        if self.post_start_cmd:
            await self.post_start_exec()
        return await self.get_ip_and_port()

    def get_env(self):
        env = container.environment(super().get_env(), self._devices)
        if self._plan is not None and self._plan.courses.sync:
            env["GPUHUB_COURSES"] = json.dumps(self._plan.courses.sync)
        return env

    async def _log_course_sync(self) -> None:
        """The start hook's course lines, into the hub log (why a course did not sync)."""
        if not self._plan.courses.sync:
            return
        try:
            logs = (await self.docker("logs", self.container_id, tail=200)).decode(errors="replace")
        except docker.errors.DockerException as e:
            self.log.warning("%s: could not read the course sync's log (%s)", self._log_name, e)
            return
        for line in logs.splitlines():
            if line.startswith("gpuhub-course:"):
                level = self.log.warning if "failed" in line or "did not finish" in line else self.log.info
                level("%s: %s", self._log_name, line)

    async def _wait_for_lease(self, svc: GPUService, ticket: Ticket, from_browser: bool):
        waiter = asyncio.ensure_future(svc.wait(ticket, self.gpu_wait_timeout))
        abandon = asyncio.ensure_future(self._abandoned()) if from_browser and ticket.future else None
        label = ticket.plan.request.label
        try:
            done, _ = await asyncio.wait([f for f in (waiter, abandon) if f], return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                raise web.HTTPError(409, "Left the GPU queue: nobody was watching the start page")
            return waiter.result()
        except asyncio.TimeoutError:
            raise web.HTTPError(
                503, f"No {label} became free within {self.gpu_wait_timeout:.0f} s; try again later"
            ) from None
        finally:
            waiter.cancel()
            if abandon:
                abandon.cancel()

    async def _abandoned(self) -> None:
        """Returns once no browser has watched the progress page for queue_abandon_after seconds."""
        unwatched_since = time.monotonic()
        while True:
            await asyncio.sleep(1)
            if self._watchers:
                unwatched_since = time.monotonic()
            elif time.monotonic() - unwatched_since > self.queue_abandon_after:
                return

    async def progress(self):
        self._watchers += 1
        try:
            while True:
                ticket = self._ticket
                svc = self._services.get(self.hub_id)
                pos = svc.position(self.owner) if ticket and svc else None
                if pos or (ticket and ticket.future and not ticket.future.done()):
                    where = f": position {pos[0]} of {pos[1]}" if pos else ""
                    message = f"Waiting for a GPU ({ticket.plan.request.label}){where}"
                elif self._devices:
                    message = f"Got {', '.join(self._devices)}; starting your server"
                else:
                    message = "Starting your server"
                # Sent every second even when unchanged: writing is how a closed tab is noticed.
                yield {"progress": 30 if pos else 60, "message": message}
                await asyncio.sleep(1)
        finally:
            self._watchers -= 1

    async def stop(self, now=False):
        if not self.object_id:
            self.clear_state()
            return
        svc = await self._service_or_503()
        reason = svc.ops.stop_reason(self.owner)
        try:
            await svc.stop(self.owner, self.object_id, timeout=1 if now else 10, reason=reason)
        except EngineError as e:
            # The container may still run with its devices: they stay held. A new start of
            # this server removes it first; otherwise orphan removal does, once unclaimed.
            self.log.error(
                "gpuhub: %s: stopping %s failed (%s); its devices stay held", self.owner, self.object_id[:12], e
            )
            raise web.HTTPError(503, f"Docker did not stop the server container ({e})") from None
        self.object_id = ""  # removed: nothing to find again (DockerSpawner does the same)
        notice = svc.ops.unwatch(self.owner)
        if notice is not None:
            self._stopped(notice.reason, notice.stopped(time.time()))
        elif reason in STOPPED_BY:
            self._stopped(reason, culling.stopped_message(time.time(), STOPPED_BY[reason]))
        self.clear_state()

    async def poll(self):
        if not self.object_id:
            return 0
        try:
            svc = await self.service()  # the first poll after a hub start rebuilds the ledger
        except Exception as e:
            # Unknown is not stopped: report it running until the engine answers.
            self.log.warning("gpuhub: %s: cannot ask the engine about its container (%s)", self.owner, e)
            return None
        status = await svc.poll(self.owner, self.object_id)
        if status is None:
            if self.owner not in svc.ops.watches and self._started:
                self._watch(svc)  # after a hub restart
            return None
        svc.ops.unwatch(self.owner)
        ended = svc.ended.pop(self.owner, None)
        if ended is not None and ended[0] != "user":
            self._stopped(ended[0], culling.stopped_message(ended[1], ended[2]))
        return status

    def get_state(self):
        state = super().get_state()
        if self._devices:
            state["gpu_devices"] = list(self._devices)
        if self._started:
            state["gpuhub_started"] = self._started
        if self._last_stop:
            state["gpuhub_last_stop"] = self._last_stop  # kept after the stop, for the hub's pages
        return state

    def load_state(self, state):
        super().load_state(state)
        self._devices = tuple(state.get("gpu_devices", ()))
        self._started = state.get("gpuhub_started") or None
        self._last_stop = state.get("gpuhub_last_stop") or None

    def clear_state(self):
        super().clear_state()
        self._devices = ()
        self._started = None
        self._plan = self._ticket = None  # a later create_object outside a start is a plain CPU one

    async def _wait_until_answering(self, ip: str, port: int) -> None:
        """Return once the server answers HTTP; fail early, with its last log line, if it exits."""
        url = f"http://{ip}:{port}{self.server.base_url if self.server else '/'}api"
        client = AsyncHTTPClient()
        began = time.monotonic()
        deadline = began + self.start_timeout
        next_state_check = began + 2
        while time.monotonic() < deadline:
            try:
                response = await client.fetch(HTTPRequest(url, connect_timeout=2, request_timeout=5), raise_error=False)
                if response.code != 599:  # any HTTP answer means the server is up
                    return
            except (HTTPClientError, OSError):
                pass
            if time.monotonic() >= next_state_check:
                next_state_check = time.monotonic() + 2
                await self._fail_if_exited()
            now = time.monotonic()
            wait = ready_poll_wait(now - began, self.ready_poll_interval, self.ready_poll_max_interval)
            # Backed off or not, a server that exits while starting is noticed within 2 s.
            await asyncio.sleep(min(wait, max(0.0, next_state_check - now)))
        # Let JupyterHub's own timeout handling report it.

    async def _fail_if_exited(self) -> None:
        try:
            state = (await self.docker("inspect_container", self.container_id))["State"]
        except docker.errors.NotFound:
            raise web.HTTPError(500, "The server container disappeared while starting") from None
        except docker.errors.DockerException:
            return  # the engine did not answer: ask again at the next check
        if state.get("Running"):
            return
        logs = await self.docker("logs", self.container_id, tail=5)
        last = logs.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise web.HTTPError(
            500,
            f"The server container exited with code {state.get('ExitCode')} while starting: {last[0][:300]}",
        )
