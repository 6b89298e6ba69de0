"""A multi-node Docker Swarm simulated on one Linux host, for tests (root only).

Each node is a network namespace (gpuhub-swN) with its own containerd and dockerd, both from the
host's packages, started through `nsenter --net` (not `ip netns exec`: that remounts /sys, which
on a cgroup-v1 host hides /sys/fs/cgroup and dockerd dies with "Devices cgroup isn't mounted")
and `unshare --uts` (so each node has its own hostname in `docker node ls`). The nodes' veths
meet on a bridge that lives in a namespace of its own (gpuhub-swbr): with br_netfilter loaded,
frames crossing a bridge in the host namespace would go through the host's FORWARD chain, whose
policy Docker sets to DROP. The host reaches the nodes through one veth of its own (gpuhub-sw0,
10.99.0.1/24), so tests on the host can talk to host-mode published ports at a node's IP; no
host iptables rule is added.

Everything lives under its own names and paths (RUN_ROOT, LIB_ROOT, SHARED_ROOT, the netns and
link names, the cgroup parent), so the host engine, its containers and its networks are never
touched, and a crashed earlier run can be cleaned up from those names alone.

Swarm limits on such hosts: without IPVS in the kernel (Debian's VM kernels here), services
must use endpoint mode dnsrr and no ingress (routing-mesh) ports; host-mode published ports
work. Generic resources are advertised (node-generic-resources) but must not be requested on
Engine 20.10 (moby/moby#44378).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_STANDIN = ROOT / "tests/hardware/nvidia-container-runtime"

RUN_ROOT = Path("/run/gpuhub-swarm")
LIB_ROOT = Path("/var/lib/gpuhub-swarm")
SHARED_TOP = Path("/srv/gpuhub-swarm-test")
SHARED_ROOT = SHARED_TOP / "shared"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "gpuhub-swarm"
NETNS_PREFIX = "gpuhub-sw"
BRIDGE_NETNS = "gpuhub-swbr"
HOST_LINK = "gpuhub-sw0"
HOST_IP = "10.99.0.1"
LINK_PREFIX = 24
OVERLAY_POOL = "10.99.128.0/17"
DEFAULT_NETWORK = "gpuhub-swarm"
NODE_NAME_LABEL = "gpuhub.node-name"
GPU_KIND = "NVIDIA-GPU"
MANAGER_PORT = 2377
MAX_NODES = 7
DAEMON_PROGRAMS = {"dockerd", "containerd", "containerd-shim-runc-v2", "runc", "docker-proxy"}
BUSYBOX = Path("/bin/busybox")
BUSYBOX_TAG = "gpuhub-swarm/busybox:latest"
NETNS_DIR = Path("/run/netns")
HOST_NETWORK_FILES = Path("/var/lib/docker/network/files")
HOST_FILES_SNAPSHOT = RUN_ROOT / "host-network-files.json"
NETNS_MOUNT_MARK = RUN_ROOT / "netns-dir-mounted"


def missing_prerequisites() -> str | None:
    """Why a cluster cannot be started on this host, or None."""
    if os.geteuid() != 0:
        return "the simulated Swarm needs root (network namespaces, dockerd)"
    for tool in ("dockerd", "containerd", "runc", "docker", "nsenter", "unshare", "ip", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: docker.io, iproute2, util-linux)"
    if not BUSYBOX.exists():
        return f"{BUSYBOX} is missing (Debian: busybox-static); the Swarm tests' image is made from it"
    return None


def node_ip(index: int) -> str:
    return f"10.99.0.{10 + index}"


def fake_gpus(index: int, count: int = 2) -> list[str]:
    """Stand-in GPU UUIDs in NVML's format, distinct per node: ...-8000-<node:6><gpu:6>."""
    return [f"GPU-5a0e0000-0000-4000-8000-{index:06d}{i:06d}" for i in range(count)]


def run(argv: Sequence[str], check: bool = True, input: str | None = None, timeout: float = 120):
    """A host command with text output; a failure names the command and its stderr."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns something truthy; its last error is part of the timeout message."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal(pid: int | None, sig: int) -> None:
    if pid:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Daemon:
    """One of a node's daemons, started in the node's namespaces, its pid kept in a pid file so
    that a later run can find it when this run crashed."""

    def __init__(self, node: SwarmNode, name: str, argv: list[str], own_pid_file: Path | None = None):
        self.node = node
        self.name = name
        self.argv = argv
        self.pid_file = node.run_dir / f"{name}.pid"
        self.own_pid_file = own_pid_file
        self.log_file = node.lib_dir / f"{name}.log"
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return _alive(self.pid)

    def start(self) -> None:
        """The pid is the daemon's own: nsenter, unshare and sh each exec the next."""
        if self.alive():
            return
        wrapped = [
            "nsenter",
            f"--net=/run/netns/{self.node.netns}",
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.node.name,
            *self.argv,
        ]
        with open(self.log_file, "a") as log:
            self._proc = subprocess.Popen(
                wrapped,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.node.daemon_env(),
                start_new_session=True,
            )
        self.pid_file.write_text(str(self._proc.pid))

    def signal_and_wait(self, sig: int, timeout: float) -> bool:
        """Whether it ended within `timeout` (it is reaped, so no zombie stays behind)."""
        _signal(self.pid, sig)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.alive()

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL if it does not end in time."""
        if self.alive() and not self.signal_and_wait(signal.SIGTERM, timeout):
            self.signal_and_wait(signal.SIGKILL, 10)
        self._forget()

    def kill(self) -> None:
        if self.alive():
            self.signal_and_wait(signal.SIGKILL, 10)
        self._forget()

    def _forget(self) -> None:
        """dockerd refuses to start while its own pid file names a live process, which a killed
        daemon's file can do once the pid is reused."""
        if self._proc is not None:
            self._proc.poll()
        self._proc = None
        for path in (self.pid_file, self.own_pid_file):
            if path is not None:
                path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class SwarmNode:
    """One simulated node: its netns, containerd, dockerd and their configuration."""

    def __init__(self, index: int, gpus: list[str], runtime_log: Path, live_restore: bool = False):
        self.index = index
        self.name = f"node{index}"
        self.ip = node_ip(index)
        self.netns = f"{NETNS_PREFIX}{index}"
        self.gpus = list(gpus)
        self.runtime_log = runtime_log
        self.run_dir = RUN_ROOT / self.name
        self.lib_dir = LIB_ROOT / self.name
        self.data_root = self.lib_dir / "docker"
        self.sock = str(self.run_dir / "docker.sock")
        self.url = "unix://" + self.sock
        self.containerd_sock = str(self.run_dir / "containerd.sock")
        self.config_file = self.lib_dir / "daemon.json"
        self.containerd_config = self.lib_dir / "containerd.toml"
        self.node_id = ""
        self._live_restore = live_restore
        self.containerd = Daemon(self, "containerd", ["containerd", "--config", str(self.containerd_config)])
        self.dockerd = Daemon(
            self, "dockerd", ["dockerd", "--config-file", str(self.config_file)], self.run_dir / "docker.pid"
        )

    def __repr__(self) -> str:
        return f"SwarmNode({self.name}, {self.ip}, id={self.node_id[:12] or '-'})"

    @property
    def pid(self) -> int | None:
        """dockerd's pid, None while it is not running."""
        return self.dockerd.pid if self.dockerd.alive() else None

    @property
    def containerd_namespace(self) -> str:
        return f"gpuhub-sw{self.index}"

    # --- configuration ----------------------------------------------------------------------
    def daemon_config(self) -> dict:
        """Own networks (no overlap with the host engine's or the other nodes'), the stand-in
        GPUs as an inventory, and NVIDIA's runtime as the default, as on a real GPU node."""
        n = self.index
        return {
            "hosts": [self.url],
            "data-root": str(self.data_root),
            "exec-root": str(self.run_dir / "exec"),
            "pidfile": str(self.dockerd.own_pid_file),
            "deprecated-key-path": str(self.lib_dir / "key.json"),
            "containerd": self.containerd_sock,
            "containerd-namespace": self.containerd_namespace,
            "containerd-plugins-namespace": f"{self.containerd_namespace}-plugins",
            "cgroup-parent": f"/{CGROUP_PARENT}/{self.name}",
            "bip": f"10.99.{16 * n}.1/24",
            "default-address-pools": [{"base": f"10.99.{16 * n + 8}.0/21", "size": 24}],
            "node-generic-resources": [f"{GPU_KIND}={uuid}" for uuid in self.gpus],
            "no-new-privileges": True,
            "live-restore": self._live_restore,
            "userland-proxy": False,
            "shutdown-timeout": 10,
            "runtimes": {"nvidia": {"path": str(RUN_ROOT / "bin" / RUNTIME_STANDIN.name)}},
            "default-runtime": "nvidia",
            "log-driver": "json-file",
            "log-level": "warn",
        }

    def containerd_toml(self) -> str:
        """Own root, state and sockets; the CRI plugin is off (nothing here speaks CRI)."""
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.lib_dir / "containerd"}"',
                f'state = "{self.run_dir / "containerd-state"}"',
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                "[grpc]",
                f'  address = "{self.containerd_sock}"',
                "[ttrpc]",
                f'  address = "{self.containerd_sock}.ttrpc"',
                "[debug]",
                '  address = ""',
                "[metrics]",
                '  address = ""',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{self.lib_dir / "opt"}"',
                "",
            ]
        )

    def write_config(self) -> None:
        for d in (self.run_dir, self.lib_dir, self.data_root):
            d.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(self.daemon_config(), indent=2) + "\n")
        self.containerd_config.write_text(self.containerd_toml())

    def set_live_restore(self, enabled: bool) -> None:
        """Takes effect at the next start of dockerd. Engine 20.10 refuses it on a Swarm member:
        dockerd exits with "--live-restore daemon configuration is incompatible with swarm mode"
        (start_dockerd then raises with that log line), so only a node outside the swarm (or one
        about to leave it) can use it."""
        self._live_restore = enabled
        self.write_config()

    def daemon_env(self) -> dict[str, str]:
        """The stand-in runtime runs under containerd's shims and inherits this environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env["GPUHUB_NODE_NAME"] = self.name
        env["DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"] = "1"
        env["GPUHUB_RUNTIME_LOG"] = str(self.runtime_log)
        return env

    # --- network ----------------------------------------------------------------------------
    def plumb(self) -> None:
        """Its netns and a veth into the bridge; eth0 and the default route point at the host."""
        port = f"sw{self.index}"
        run(["ip", "netns", "add", self.netns])
        run(
            [
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                self.netns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                BRIDGE_NETNS,
            ]
        )
        run(["ip", "-n", BRIDGE_NETNS, "link", "set", port, "master", "br0", "up"])
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        run(["ip", "-n", self.netns, "addr", "add", f"{self.ip}/{LINK_PREFIX}", "dev", "eth0"])
        run(["ip", "-n", self.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", self.netns, "route", "add", "default", "via", HOST_IP])

    # --- daemons ----------------------------------------------------------------------------
    def start_containerd(self, timeout: float = 30) -> None:
        if self.containerd.alive():
            return
        self.containerd.start()
        wait_for(lambda: self._answers(self.containerd_sock, self.containerd), timeout, f"{self.name} containerd")

    def start_dockerd(self, timeout: float = 60) -> None:
        """Starts containerd first if it is not running; returns once dockerd answers."""
        self.start_containerd()
        if not self.dockerd.alive():
            self.dockerd.start()
        wait_for(self._dockerd_answers, timeout, f"{self.name} dockerd")

    def stop_dockerd(self, timeout: float = 30) -> None:
        self.dockerd.stop(timeout)

    def kill_dockerd(self, containerd: bool = False) -> None:
        """SIGKILL, as a crash would: containers keep running under containerd unless it goes too."""
        self.dockerd.kill()
        if containerd:
            self.containerd.kill()

    def restart_dockerd(self, timeout: float = 60) -> None:
        self.stop_dockerd()
        self.start_dockerd(timeout)

    def _answers(self, path: str, daemon: Daemon) -> bool:
        if not daemon.alive():
            raise RuntimeError(f"{daemon.name} of {self.name} exited:\n{daemon.log_tail()}")
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
        return True

    def _dockerd_answers(self) -> bool:
        self._answers(self.sock, self.dockerd)
        return docker.APIClient(base_url=self.url, version="1.41", timeout=5).ping()

    def image_id(self, tag: str) -> str | None:
        proc = self.docker("image", "inspect", "-f", "{{.Id}}", tag, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    # --- clients ----------------------------------------------------------------------------
    def client(self, timeout: int = 60) -> docker.APIClient:
        return docker.APIClient(base_url=self.url, version="auto", timeout=timeout)

    def docker(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120):
        """The host's docker CLI against this node; text output."""
        return run(["docker", "-H", self.url, *args], check=check, input=input, timeout=timeout)


class SwarmCluster:
    """Nodes node1..nodeN; node1 is the manager, the others join as workers.

    `gpus` maps node names to their stand-in GPU UUIDs (default: 2 per node, see fake_gpus).
    `heartbeat` is Swarm's dispatcher heartbeat: a killed node shows Down after a few of them.
    Live restore stays off: Engine 20.10 refuses it in swarm mode (SwarmNode.set_live_restore).
    """

    def __init__(
        self,
        size: int = 3,
        gpus: dict[str, list[str]] | None = None,
        network: str = DEFAULT_NETWORK,
        heartbeat: str = "2s",
    ):
        if not 1 <= size <= MAX_NODES:
            raise ValueError(f"1 to {MAX_NODES} nodes: each takes a /20 of 10.99.0.0/17 for its bridges")
        self.runtime_log_path = RUN_ROOT / "runtime.jsonl"
        gpus = gpus or {}
        self.nodes = [
            SwarmNode(i, gpus.get(f"node{i}", fake_gpus(i)), self.runtime_log_path) for i in range(1, size + 1)
        ]
        self.network = network
        self.heartbeat = heartbeat
        self.shared_root = SHARED_ROOT
        self.host_ip = HOST_IP
        self.timings: dict[str, float] = {}
        self._up = False

    @property
    def manager(self) -> SwarmNode:
        return self.nodes[0]

    @property
    def workers(self) -> list[SwarmNode]:
        return self.nodes[1:]

    def node(self, name: str) -> SwarmNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def __enter__(self) -> SwarmCluster:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # --- lifecycle --------------------------------------------------------------------------
    def up(self, timeout: float = 120, images: Sequence[str] = ()) -> SwarmCluster:
        """A fresh cluster: leftovers of any earlier run are removed first. Calling it again on a
        cluster that is up does nothing. `images` (host engine tags) end up on every node, loaded
        once (see _seed_images); `timings` tells how long that and the rest took."""
        if self._up:
            return self
        started = time.monotonic()
        clean_leftovers()
        try:
            self._prepare_host()
            if images:
                self._seed_images(images, timeout)
            self._start_nodes(timeout)
            self._form_swarm()
            self.wait_ready(timeout)
            self._label_nodes()
            self._create_network()
        except BaseException:
            self.down()
            raise
        self._up = True
        self.timings["up"] = time.monotonic() - started
        return self

    def down(self) -> None:
        """Full teardown; safe to call more than once and after a failed up(). Everything is
        killed rather than stopped: the state is thrown away, and a graceful dockerd stop waits
        out every container's stop timeout."""
        for n in self.nodes:
            n.kill_dockerd(containerd=True)
            n.node_id = ""
        clean_leftovers()
        self._up = False

    def _prepare_host(self) -> None:
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        bin_dir = RUN_ROOT / "bin"
        bin_dir.mkdir(exist_ok=True)
        shutil.copy2(RUNTIME_STANDIN, bin_dir / RUNTIME_STANDIN.name)
        (bin_dir / RUNTIME_STANDIN.name).chmod(0o755)
        self.runtime_log_path.touch()
        self.shared_root.mkdir(parents=True, exist_ok=True)
        _snapshot_host_network_files()
        _plumb_bridge()
        for n in self.nodes:
            n.write_config()
            n.plumb()

    def _seed_images(self, images: Sequence[str], timeout: float) -> None:
        """Loads the images into the manager only, stops it, and gives every other node a copy of
        its image store before their first start: metadata copied, layer files hard-linked (the
        nodes share the host's filesystem). Layers are only ever overlayfs lower layers, never
        written in place, and dockerd replaces metadata files by rename, so no node can change
        another's. About one load's time instead of three concurrent ones on a disk-bound host."""
        started = time.monotonic()
        m = self.manager
        m.start_dockerd(timeout)
        for tag in images:
            _stream_load(tag, m.url)
        m.stop_dockerd()
        for w in self.workers:
            run(["cp", "-a", str(m.data_root / "image"), str(w.data_root)])
            run(["cp", "-al", str(m.data_root / "overlay2"), str(w.data_root)], timeout=600)
        self.timings["seed images"] = time.monotonic() - started

    def _start_nodes(self, timeout: float) -> None:
        """In parallel: dockerd's start-up is mostly waiting, and there are only two cores to share."""
        _in_parallel([lambda n=n: n.start_dockerd(timeout) for n in self.nodes])

    def _form_swarm(self) -> None:
        """The pool keeps overlay subnets off the link and bridge subnets; a short heartbeat
        makes a dead node show Down within seconds."""
        m = self.manager
        pool = ["--default-addr-pool", OVERLAY_POOL, "--default-addr-pool-mask-length", "24"]
        listen = ["--advertise-addr", m.ip, "--listen-addr", f"{m.ip}:{MANAGER_PORT}"]
        m.docker("swarm", "init", *listen, *pool, "--dispatcher-heartbeat", self.heartbeat)
        token = m.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        join = ["swarm", "join", "--token", token, f"{m.ip}:{MANAGER_PORT}"]
        _in_parallel([lambda w=w: w.docker(*join, "--advertise-addr", w.ip) for w in self.workers])

    def _label_nodes(self) -> None:
        by_host = {n["Description"]["Hostname"]: n["ID"] for n in self.manager.client().nodes()}
        for n in self.nodes:
            n.node_id = by_host[n.name]
            self.manager.docker("node", "update", "--label-add", f"{NODE_NAME_LABEL}={n.name}", n.node_id)

    def _create_network(self) -> None:
        self.manager.docker("network", "create", "--driver", "overlay", "--attachable", self.network)

    # --- state ------------------------------------------------------------------------------
    def node_states(self) -> dict[str, str]:
        """Hostname -> Swarm's view of it ("ready", "down", "unknown", ...), from the manager."""
        return {n["Description"]["Hostname"]: n["Status"]["State"] for n in self.manager.client(timeout=10).nodes()}

    def wait_ready(self, timeout: float = 60, names: Iterable[str] | None = None) -> None:
        self.wait_state("ready", timeout, names)

    def wait_state(self, state: str, timeout: float = 60, names: Iterable[str] | None = None) -> None:
        wanted = list(names) if names is not None else [n.name for n in self.nodes]

        def reached() -> bool:
            states = self.node_states()
            return all(states.get(name) == state for name in wanted)

        wait_for(reached, timeout, f"nodes {', '.join(wanted)} {state}", interval=0.5)

    def runtime_log(self) -> list[dict]:
        """Every container create seen by the stand-in NVIDIA runtime on any node, oldest first."""
        try:
            lines = self.runtime_log_path.read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def tasks(self, service: str) -> list[dict]:
        return self.manager.client().tasks(filters={"service": service})

    def running_task(self, service: str, timeout: float = 60) -> dict:
        """The service's task that runs and is meant to (a task on a Down node can still show
        running, with desired state shutdown). On a timeout, the last task error is named."""

        def find() -> dict | None:
            tasks = self.tasks(service)
            for task in tasks:
                if task["Status"]["State"] == "running" and task["DesiredState"] == "running":
                    return task
            errors = [t["Status"].get("Err") for t in tasks if t["Status"].get("Err")]
            if errors:
                raise RuntimeError(errors[-1])
            return None

        return wait_for(find, timeout, f"a running task of {service}", interval=0.5)

    def node_of(self, node_id: str) -> SwarmNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    # --- services ---------------------------------------------------------------------------
    def service(
        self,
        name: str,
        image: str,
        *command: str,
        node: SwarmNode | str | None = None,
        env: dict[str, str] | None = None,
        host_port: tuple[int, int] | None = None,
        network: str | None = "",
    ) -> str:
        """A one-replica service as gpuhub makes them: endpoint mode dnsrr (no IPVS here), on the
        overlay network (`network=None` for none), pinned by node.id when `node` is given;
        `host_port=(published, target)` publishes in host mode. Returns the service id."""
        args = ["service", "create", "-d", "--no-resolve-image", "--name", name, "--endpoint-mode", "dnsrr"]
        if network is not None:
            args += ["--network", network or self.network]
        if node is not None:
            target = node if isinstance(node, SwarmNode) else self.node(node)
            args += ["--constraint", f"node.id=={target.node_id}"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        if host_port is not None:
            args += ["--publish", f"mode=host,published={host_port[0]},target={host_port[1]}"]
        return self.manager.docker(*args, image, *command).stdout.strip()

    def remove_service(self, name: str) -> None:
        self.manager.docker("service", "rm", name, check=False)

    # --- images -----------------------------------------------------------------------------
    def load_image(self, tag: str, nodes: Iterable[SwarmNode | str] | None = None) -> float:
        """Copies `tag` from the host engine into the nodes; returns the seconds it took.

        Nodes that already hold the same image (by id; see `up(images=...)`) are skipped. One
        node: `docker save` streamed into its `docker load`. Several: one `docker save` to a
        file, then every node loads that file at once; measured faster than a save per node, and
        than one save streamed to all loads (the slowest load holds back the others there).
        """
        started = time.monotonic()
        wanted = run(["docker", "image", "inspect", "-f", "{{.Id}}", tag]).stdout.strip()
        targets = [n for n in self._targets(nodes) if n.image_id(tag) != wanted]
        if len(targets) == 1:
            _stream_load(tag, targets[0].url)
        elif targets:
            _file_load(tag, [n.url for n in targets])
        took = time.monotonic() - started
        self.timings[f"load {tag} into {len(targets)} node(s)"] = took
        return took

    def import_busybox(self, tag: str = BUSYBOX_TAG, nodes: Iterable[SwarmNode | str] | None = None) -> str:
        """A 2 MB image made from the host's static busybox (Debian's busybox-static), imported
        straight into the nodes: the host engine is not involved."""
        data = busybox_rootfs()
        for n in self._targets(nodes):
            proc = subprocess.run(
                ["docker", "-H", n.url, "import", "--change", 'CMD ["sh"]', "-", tag], input=data, capture_output=True
            )
            if proc.returncode != 0:
                raise RuntimeError(f"importing busybox into {n.name}: {proc.stderr.decode(errors='replace')}")
        return tag

    def _targets(self, nodes: Iterable[SwarmNode | str] | None) -> list[SwarmNode]:
        if nodes is None:
            return list(self.nodes)
        return [n if isinstance(n, SwarmNode) else self.node(n) for n in nodes]


def busybox_rootfs() -> bytes:
    """A tar of /bin/busybox, a symlink per applet, and /tmp, /etc and /www."""
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    applets = run([str(BUSYBOX), "--list"]).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                _tar_entry(tar, f"bin/{applet}", tarfile.SYMTYPE, 0o777, "busybox")
        for d, mode in (("tmp", 0o1777), ("etc", 0o755), ("www", 0o755)):
            _tar_entry(tar, d, tarfile.DIRTYPE, mode)
    return buf.getvalue()


def _tar_entry(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    tar.addfile(info)


# --- image transfer ---------------------------------------------------------------------------
def _stream_load(tag: str, url: str) -> None:
    save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    load = subprocess.Popen(
        ["docker", "-H", url, "load", "-q"], stdin=save.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    save.stdout.close()
    _check_processes([(f"docker save {tag}", save), (f"docker -H {url} load", load)])


def _file_load(tag: str, urls: list[str]) -> None:
    LIB_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=LIB_ROOT, prefix="image-", suffix=".tar") as archive:
        run(["docker", "save", "-o", archive.name, tag], timeout=900)
        loads = [
            subprocess.Popen(
                ["docker", "-H", url, "load", "-q", "-i", archive.name],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for url in urls
        ]
        _check_processes([(f"docker -H {u} load", p) for u, p in zip(urls, loads, strict=True)])


def _check_processes(named: list[tuple[str, subprocess.Popen]]) -> None:
    failures = []
    for what, proc in named:
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            failures.append(f"{what} failed ({proc.returncode}): {err}")
    if failures:
        raise RuntimeError("; ".join(failures))


def _in_parallel(calls: list) -> None:
    """Runs the calls in threads; the first exception is raised once all have ended."""
    errors: list[BaseException] = []

    def guarded(call):
        try:
            call()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# --- host plumbing and cleanup ----------------------------------------------------------------
def host_lb_entries() -> set[str]:
    """The lb_<network id> entries in the host engine's network files (see _snapshot_host_network_files)."""
    try:
        return {p.name for p in HOST_NETWORK_FILES.iterdir() if p.name.startswith("lb_")}
    except OSError:
        return set()


def _snapshot_host_network_files() -> None:
    """libnetwork 20.10 writes the hosts and resolv.conf of an overlay network's load-balancer
    sandbox to a hard-coded /var/lib/docker/network/files/lb_<network id>/, whatever the
    daemon's data-root: the nodes write into the host engine's directory. What is there before
    the cluster starts is noted, so that clean_leftovers() removes only what came after."""
    HOST_FILES_SNAPSHOT.write_text(json.dumps(sorted(host_lb_entries())))


def _remove_lb_files() -> None:
    """The lb_ entries made since the snapshot, or, without one (a run that crashed before
    writing it), those whose network our nodes' sandboxes name (lb_<first 10 characters>)."""
    try:
        before = set(json.loads(HOST_FILES_SNAPSHOT.read_text()))
        ours = host_lb_entries() - before
    except (OSError, ValueError):
        prefixes = {p.name for p in RUN_ROOT.glob("node*/exec/netns/lb_*")}
        ours = {e for e in host_lb_entries() if any(e.startswith(prefix) for prefix in prefixes)}
    for name in ours:
        shutil.rmtree(HOST_NETWORK_FILES / name, ignore_errors=True)


def _note_netns_dir() -> None:
    """`ip netns add` makes /run/netns a mount point (and the directory) when it is not one yet;
    noted, so that clean_leftovers() can undo what the first `ip netns add` did."""
    if str(NETNS_DIR) in _mounts_under([NETNS_DIR]):
        return
    NETNS_MOUNT_MARK.write_text("mounted" if NETNS_DIR.exists() else "created")


def _undo_netns_dir() -> None:
    try:
        made = NETNS_MOUNT_MARK.read_text()
    except OSError:
        return
    if NETNS_DIR.is_dir() and not any(NETNS_DIR.iterdir()):
        run(["umount", str(NETNS_DIR)], check=False)
        if made == "created" and str(NETNS_DIR) not in _mounts_under([NETNS_DIR]):
            _rmdir(NETNS_DIR)


def _plumb_bridge() -> None:
    """The bridge netns with br0, and the host's veth into it."""
    _note_netns_dir()
    run(["ip", "netns", "add", BRIDGE_NETNS])
    run(["ip", "-n", BRIDGE_NETNS, "link", "add", "br0", "type", "bridge"])
    run(["ip", "-n", BRIDGE_NETNS, "link", "set", "lo", "up"])
    run(["ip", "-n", BRIDGE_NETNS, "link", "set", "br0", "up"])
    run(["ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", "host", "netns", BRIDGE_NETNS])
    run(["ip", "-n", BRIDGE_NETNS, "link", "set", "host", "master", "br0", "up"])
    run(["ip", "addr", "add", f"{HOST_IP}/{LINK_PREFIX}", "dev", HOST_LINK])
    run(["ip", "link", "set", HOST_LINK, "up"])


def _ours(pid: int) -> bool:
    """A daemon of a simulated node, known by its program and our paths on its command line
    (for when its netns is gone already); a shell or editor that names our paths is not."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not argv[0] or Path(argv[0].decode(errors="replace")).name not in DAEMON_PROGRAMS:
        return False
    cmdline = b" ".join(argv).decode(errors="replace")
    return str(RUN_ROOT) in cmdline or str(LIB_ROOT) in cmdline


def _netns_inodes() -> set[int]:
    found = set()
    for path in NETNS_DIR.glob(f"{NETNS_PREFIX}*") if NETNS_DIR.is_dir() else ():
        try:
            found.add(path.stat().st_ino)
        except OSError:
            pass
    return found


def _in_netns(pid: int, inodes: set[int]) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino in inodes
    except OSError:
        return False


def _cgroup_pids() -> set[int]:
    """Container processes under our cgroup parent (in any v1 controller)."""
    pids = set()
    for procs in CGROUP_ROOT.glob(f"*/{CGROUP_PARENT}/**/cgroup.procs"):
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except (OSError, ValueError):
            pass
    return pids


def _leftover_pids() -> set[int]:
    inodes = _netns_inodes()
    me = os.getpid()
    found = _cgroup_pids()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            if _ours(pid) or _in_netns(pid, inodes):
                found.add(pid)
    found.discard(me)
    return found


def _kill_leftovers() -> None:
    """SIGKILL by pid, a few rounds: shims may start container processes until they are gone."""
    for _ in range(5):
        pids = {p for p in _leftover_pids() if _alive(p)}
        if not pids:
            return
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.3)


def _mounts_under(tops: Iterable[Path]) -> list[str]:
    found = []
    prefixes = [str(t).rstrip("/") for t in tops]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            found.append(point)
    return sorted(set(found), key=len, reverse=True)


def _shim_sockets() -> list[Path]:
    """containerd 1.6 puts shim sockets in /run/containerd/s/<sha256(address/ns/id)>, outside
    our state; a shim killed by SIGKILL leaves its socket there. Named from our tasks' ids."""
    sockets = []
    for task_dir in RUN_ROOT.glob("node*/containerd-state/io.containerd.runtime.v2.task/*/*"):
        node_dir = task_dir.parents[2]
        address = str(node_dir.parent / "containerd.sock")
        digest = hashlib.sha256(f"{address}/{task_dir.parent.name}/{task_dir.name}".encode()).hexdigest()
        sockets.append(Path("/run/containerd/s") / digest)
    return sockets


def _remove_cgroups() -> None:
    for top in CGROUP_ROOT.glob(f"*/{CGROUP_PARENT}"):
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            _rmdir(d)
        _rmdir(top)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _netns_names() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NETNS_PREFIX)]


def clean_leftovers() -> None:
    """Remove every trace of a simulated cluster, running or crashed: processes, mounts, netns,
    the host link, state, cgroups. Touches only our names and paths."""
    _kill_leftovers()
    _remove_lb_files()
    for sock in _shim_sockets():
        sock.unlink(missing_ok=True)
    for point in _mounts_under([RUN_ROOT, LIB_ROOT, SHARED_TOP]):
        run(["umount", "-l", point], check=False)
    run(["ip", "link", "del", HOST_LINK], check=False)
    for name in _netns_names():
        run(["ip", "netns", "del", name], check=False)
    _undo_netns_dir()
    for top in (RUN_ROOT, LIB_ROOT, SHARED_TOP):
        shutil.rmtree(top, ignore_errors=True)
    _remove_cgroups()


def leftovers() -> list[str]:
    """What clean_leftovers() would remove, in words; empty when the host is clean."""
    found = [f"process {pid}" for pid in sorted(_leftover_pids()) if _alive(pid)]
    found += [f"mount {m}" for m in _mounts_under([RUN_ROOT, LIB_ROOT, SHARED_TOP])]
    found += [f"netns {n}" for n in _netns_names()]
    if Path(f"/sys/class/net/{HOST_LINK}").exists():
        found.append(f"link {HOST_LINK}")
    found += [f"path {p}" for p in (RUN_ROOT, LIB_ROOT, SHARED_TOP) if p.exists()]
    found += [f"cgroup {c}" for c in CGROUP_ROOT.glob(f"*/{CGROUP_PARENT}")]
    return found
