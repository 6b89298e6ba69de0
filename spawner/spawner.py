"""GPUDockerSpawner: glue between JupyterHub, the pure gpuhub modules and Docker.

Every decision about the container is made by `spawner.container`; this class
collects settings, calls Docker off the event loop and waits for the server.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import docker.errors
from dockerspawner import DockerSpawner
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Integer, Unicode, default, validate

from . import container
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
            raise ValueError(
                f"GPUDockerSpawner.shm_size={proposal.value!r} is not a size such as 2G"
            ) from None
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
            mem_limit=self.mem_limit,
            cpu_limit=self.cpu_limit,
            shm_size=self.shm_size,
            pids_limit=self.pids_limit,
            binds=self.volume_binds,
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

    async def start(self):
        ip, port = await super().start()
        await self._wait_until_answering(ip, port)
        return ip, port

    async def _wait_until_answering(self, ip: str, port: int) -> None:
        """Return once the server answers HTTP; fail early, with its last log line, if it exits."""
        url = f"http://{ip}:{port}{self.server.base_url if self.server else '/'}api"
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.start_timeout
        next_state_check = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                response = await client.fetch(
                    HTTPRequest(url, connect_timeout=2, request_timeout=5), raise_error=False
                )
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
        raise RuntimeError(
            f"The server container exited with code {state.get('ExitCode')} while starting: {last[0][:300]}"
        )
