"""GPUDockerSpawner: glue between JupyterHub, the pure gpuhub modules and Docker.

Every decision about the container is made by `spawner.container`; this class
collects settings, calls Docker off the event loop and waits for the server.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from concurrent.futures import ThreadPoolExecutor

import docker.errors
from dockerspawner import DockerSpawner
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Dict, Float, Integer, List, Unicode, Union, default, validate

from . import container, courses, inventory, profiles, quota
from .allocator import AllocationError
from .broker import Broker, owner_key
from .settings import parse_size


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
        "/home/jovyan",
        help="Where the home volume is mounted in the container; the image's HOME.",
    ).tag(config=True)

    notebook_user = Unicode(
        "1000:100",
        help="""
        `uid:gid` the notebook server runs as. Never root: user containers run
        unprivileged, with every capability dropped and no-new-privileges set.
        """,
    ).tag(config=True)

    @validate("notebook_user")
    def _notebook_user_not_root(self, proposal):
        if proposal.value.split(":", 1)[0].strip() in ("", "0", "root"):
            raise ValueError(f"GPUDockerSpawner.notebook_user must not be root, got {proposal.value!r}")
        return proposal.value

    shm_size = Unicode(
        "2G",
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
        4096,
        min=64,
        help="Most processes and threads a user container may run (a fork bomb stops here).",
    ).tag(config=True)

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
        Seconds between checks that a starting server answers HTTP. JupyterHub's
        own check backs off to 5 s between tries; checking at a short fixed
        interval lets a student in as soon as the server is up.
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
        Seconds between comparisons of the GPU ledger with Docker: devices of
        containers that are gone are released, containers the ledger does not
        know are logged and adopted. 0 turns it off.
        """,
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

    def container_plan(self, command: list[str]) -> container.ContainerPlan:
        """Everything container.py needs, from this spawner's settings."""
        return container.ContainerPlan(
            name=self.container_name,
            image=self.image,
            command=command,
            env=self.get_env(),
            network=self.network_name,
            port=self.port,
            hub_id=self.hub_id,
            username=self.user.name,
            server_name=self.name or "",
            home_volume=self.home_volume.format(
                **{**self.template_namespace(), "username": container.volume_safe(self.user.name)}
            ),
            home_path=self.home_path,
            user=self.notebook_user,
            mem_limit=(self._profile and self._profile.mem_limit) or self.mem_limit,
            cpu_limit=(self._profile and self._profile.cpu_limit) or self.cpu_limit,
            devices=self._devices,
            charged_to=self._charged_to,
            shm_size=self.shm_size,
            pids_limit=self.pids_limit,
            binds={**self.volume_binds, **self._course_plan.binds},
            mounts=self.mount_binds,
            extra_create_kwargs=self._render_templates(self._eval_if_callable(self.extra_create_kwargs)),
            extra_host_config=self._render_templates(self._eval_if_callable(self.extra_host_config)),
        )

    async def create_object(self):
        plan = self.container_plan(await self.get_command())
        try:
            kwargs = container.create_kwargs(plan)
            host_config = container.host_config(plan)
        except container.ContainerConfigError as e:
            raise web.HTTPError(500, f"gpuhub configuration error: {e}") from None
        kwargs["host_config"] = self.client.create_host_config(**host_config)
        return await self.docker("create_container", **kwargs)

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

    # --- GPUs: profiles, quota, the queue ------------------------------------------------------
    _profile: profiles.Profile | None = None
    _course_plan = courses.CoursePlan({}, [], [])
    _devices: tuple[str, ...] = ()
    _charged_to: str = ""
    _waiting_for: str = ""
    _watchers = 0
    _from_form = False
    _configured_image: str | None = None

    @property
    def owner(self) -> str:
        return owner_key(self.user.name, self.name or "")

    def load_inventory(self) -> inventory.Inventory:
        """Blocking (NVML): runs in a thread."""
        if self.gpus:
            return inventory.from_static(self.gpus, self.gpu_exclude)
        return inventory.discover(exclude=self.gpu_exclude)

    async def broker(self) -> Broker:
        broker = Broker.shared(self.hub_id)
        broker.log = self.log
        await broker.ensure_ready(self.load_inventory, self.docker, self.reconcile_interval)
        return broker

    def quotas(self) -> tuple[list[quota.Quota], list[str]]:
        config = quota.GPUQuota(parent=self)
        groups = {g.name: (g.properties or {}).get("gpuhub") for g in self.user.groups}
        return quota.quotas_for(config.default, config.groups, groups)

    async def get_options_form(self):
        if self.options_form:
            return await super().get_options_form()
        broker = await self.broker()
        choices = profiles.parse(self.profile_list, broker.inventory)
        quotas, _ = self.quotas()
        allowed = [p for p in choices if any(q.allows(p.slug) for q in quotas)]
        if len(choices) <= 1 or not allowed:
            return ""
        default = profiles.choose(allowed, None).slug
        items = []
        for p in allowed:
            if p.gpu:
                free, total = broker.availability(p.gpu)
                state = f"{free} of {total} free"
            else:
                state = "no GPU"
            items.append(
                f'<label class="form-check" style="display:block;margin:.4em 0">'
                f'<input class="form-check-input" type="radio" name="profile" value="{html.escape(p.slug)}"'
                f"{' checked' if p.slug == default else ''}> <strong>{html.escape(p.display_name)}</strong>"
                f' <span class="badge bg-secondary">{state}</span>'
                f"<br><small>{html.escape(p.description)}</small></label>"
            )
        return "\n".join(items)

    @default("options_from_form")
    def _options_from_form_default(self):
        def options_from_form(formdata):
            self._from_form = True
            return {"profile": (formdata.get("profile") or [""])[0]}

        return options_from_form

    async def start(self):
        from_form, self._from_form = self._from_form, False
        broker = await self._broker_or_503()
        unknown = set(self.user_options) - {"profile"}
        if unknown:
            raise web.HTTPError(400, f"unknown server option(s): {', '.join(sorted(unknown))}")
        self._course_plan = courses.plan(self.user.name, {g.name: g.properties or {} for g in self.user.groups})
        for problem in self._course_plan.problems:
            self.log.warning("gpuhub: %s", problem)
        try:
            profile = profiles.choose(
                profiles.parse(self.profile_list, broker.inventory),
                self.user_options.get("profile") or self._course_plan.profile,
            )
        except profiles.ProfileError as e:
            raise web.HTTPError(400, str(e)) from None
        quotas, problems = self.quotas()
        for problem in problems:
            self.log.warning("gpuhub: %s", problem)
        # Queued requests count like holdings: five queued servers must not add up past a limit.
        decision = quota.decide(
            quotas,
            profile.slug,
            profile.device_count,
            broker.held_by_user(self.user.name, besides=self.owner),
            broker.held_by_quota(besides=self.owner),
        )
        if not decision.allowed:
            extra = f" (ignored: {'; '.join(problems)})" if problems else ""
            raise web.HTTPError(403, f"Over quota: {decision.reason}{extra}")

        if self._configured_image is None:
            self._configured_image = self.image
        self.image = profile.image or self._configured_image
        self._profile, self._devices, self._charged_to = profile, (), decision.charged_to
        try:
            if profile.gpu:
                self._devices = await self._wait_for_devices(broker, profile, decision, from_form)
            ip, port = await super().start()
            await self._wait_until_answering(ip, port)
            await self._log_course_sync()
        except BaseException:
            if self.object_id:
                # A container exists and may run: its devices go back once stop() has removed it.
                broker.started(self.owner)
            else:
                broker.release(self.owner)
            raise
        broker.started(self.owner)
        return ip, port

    def get_env(self):
        env = super().get_env()
        if self._course_plan.sync:
            env["GPUHUB_COURSES"] = json.dumps(self._course_plan.sync)
        return env

    async def _log_course_sync(self) -> None:
        """The start hook's course lines, into the hub log (why a course did not sync)."""
        if not self._course_plan.sync:
            return
        logs = (await self.docker("logs", self.container_id, tail=200)).decode(errors="replace")
        for line in logs.splitlines():
            if line.startswith("gpuhub-course:"):
                level = self.log.warning if "failed" in line or "did not finish" in line else self.log.info
                level("%s: %s", self._log_name, line)

    async def _broker_or_503(self) -> Broker:
        try:
            return await self.broker()
        except Exception as e:
            self.log.exception("gpuhub: GPU bookkeeping is unavailable")
            raise web.HTTPError(503, f"GPU bookkeeping is unavailable ({e}); try again shortly") from None

    async def _wait_for_devices(self, broker, profile, decision, from_form: bool) -> tuple[str, ...]:
        self._waiting_for = profile.gpu.label
        waiter = asyncio.ensure_future(
            broker.acquire(self.owner, profile.gpu, decision.priority, self.gpu_wait_timeout, decision.charged_to)
        )
        abandon = asyncio.ensure_future(self._abandoned()) if from_form else None
        try:
            done, _ = await asyncio.wait([f for f in (waiter, abandon) if f], return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                raise web.HTTPError(409, "Left the GPU queue: nobody was watching the start page")
            return waiter.result().devices
        except asyncio.TimeoutError:
            raise web.HTTPError(
                503,
                f"No {profile.gpu.label} became free within {self.gpu_wait_timeout:.0f} s; try again later",
            ) from None
        except AllocationError as e:
            raise web.HTTPError(400, str(e)) from None
        finally:
            waiter.cancel()
            if abandon:
                abandon.cancel()
            self._waiting_for = ""

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
            broker = await self.broker()
            while True:
                if self._waiting_for:
                    pos = broker.position(self.owner)
                    where = f": position {pos[0]} of {pos[1]}" if pos else ""
                    message = f"Waiting for a GPU ({self._waiting_for}){where}"
                elif self._devices:
                    message = f"Got {', '.join(self._devices)}; starting your server"
                else:
                    message = "Starting your server"
                # Sent every second even when unchanged: writing is how a closed tab is noticed.
                yield {"progress": 30 if self._waiting_for else 60, "message": message}
                await asyncio.sleep(1)
        finally:
            self._watchers -= 1

    async def stop(self, now=False):
        broker = await self.broker()
        if self.object_id:
            try:
                await super().stop(now)
            except BaseException:
                # The container may still run with its devices: keep them held; reconcile
                # gives them back once Docker no longer shows it.
                broker.started(self.owner)
                raise
        else:
            self.clear_state()
        broker.release(self.owner)
        self._devices = ()

    async def poll(self):
        try:
            broker = await self.broker()  # the first poll after a hub start rebuilds the ledger
        except Exception:
            self.log.exception("gpuhub: GPU bookkeeping is unavailable; polling the container only")
            return await super().poll()
        status = await super().poll()
        if status is not None and self.owner not in broker.starting:
            broker.release(self.owner)
        return status

    def get_state(self):
        state = super().get_state()
        if self._devices:
            state["gpu_devices"] = list(self._devices)
        return state

    def load_state(self, state):
        super().load_state(state)
        self._devices = tuple(state.get("gpu_devices", ()))

    def clear_state(self):
        super().clear_state()
        self._devices = ()

    async def _wait_until_answering(self, ip: str, port: int) -> None:
        """Return once the server answers HTTP; fail early, with its last log line, if it exits."""
        url = f"http://{ip}:{port}{self.server.base_url if self.server else '/'}api"
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.start_timeout
        next_state_check = time.monotonic() + 2
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
            await asyncio.sleep(self.ready_poll_interval)
        # Let JupyterHub's own timeout handling report it.

    async def _fail_if_exited(self) -> None:
        state = (await self.docker("inspect_container", self.container_id))["State"]
        if state.get("Running"):
            return
        logs = await self.docker("logs", self.container_id, tail=5)
        last = logs.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise web.HTTPError(
            500,
            f"The server container exited with code {state.get('ExitCode')} while starting: {last[0][:300]}",
        )
