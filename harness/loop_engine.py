"""A Docker Engine of the tests' own whose volumes live on a small loopback XFS (root only).

    with LoopEngine(size_mb=300, quota=True) as engine:   # mkfs.xfs, mount -o prjquota, dockerd
        engine.load_image("gpuhub/notebook:cpu")           # from the host engine, once per data-root
        engine.network(...)                                # the user network a hub on this host reaches
        hub = Hub(..., env={"DOCKER_HOST": engine.url, ...})

The layout is the one docs/admin.md recommends for home size limits: Docker's data-root on the
host's filesystem, and a filesystem of its own (here a loop-mounted image file) at
<data-root>/volumes. The data-root stays between runs (the loaded image is reused); the volumes
filesystem is made afresh each time. Its own socket, pid file, exec-root and managed containerd;
no iptables rules and a default bridge of its own (DEFAULT_BRIDGE), so the host engine and its
networks are never touched. Not `--bridge=none`: a dockerd started so deletes the host's `docker0`
(moby's removeDefaultBridgeInterface), the host engine's default network, in this network namespace.
Everything it leaves (a dockerd, a mount, a loop device) is found again from these fixed paths,
so a crashed earlier run is cleaned up by the next one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import docker

LIB_ROOT = Path("/var/lib/gpuhub-loop-engine")
RUN_ROOT = Path("/run/gpuhub-loop-engine")


class QuotaUnsupported(RuntimeError):
    """This kernel cannot mount XFS with project quotas (the message is the kernel's reason)."""


# The loop engine's default bridge network (not the host's docker0) and its address.
DEFAULT_BRIDGE, DEFAULT_BRIDGE_ADDRESS = "gpuhubloopd0", "10.233.0.1/24"


def missing_prerequisites() -> str | None:
    """Why a loop engine cannot be started on this host, or None."""
    if os.geteuid() != 0:
        return "a loop engine needs root (losetup, mount, dockerd)"
    for tool in ("dockerd", "docker", "losetup", "mount", "umount", "mkfs.xfs", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: docker.io, util-linux, xfsprogs)"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control: this host cannot make loop devices"
    return None


def _run(argv: list[str], check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class LoopEngine:
    def __init__(self, size_mb: int = 300, quota: bool = True, name: str = "homes"):
        self.size_mb = size_mb
        self.quota = quota
        self.lib = LIB_ROOT / name
        self.run_dir = RUN_ROOT / name
        self.data_root = self.lib / "docker"
        self.volumes = self.data_root / "volumes"
        self.image_file = self.lib / "volumes.xfs"
        self.sock = self.run_dir / "docker.sock"
        self.url = f"unix://{self.sock}"
        self.pid_file = self.run_dir / "docker.pid"
        self.loop_file = self.run_dir / "loop"
        self.log_file = self.lib / "dockerd.log"
        self._proc: subprocess.Popen | None = None

    # --- life cycle -----------------------------------------------------------------------------
    def __enter__(self) -> LoopEngine:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self, timeout: float = 60) -> LoopEngine:
        self.down()  # what a crashed earlier run left
        for d in (self.run_dir, self.volumes):
            d.mkdir(parents=True, exist_ok=True)
        # dockerd bind-mounts a data-root whose mount is neither shared nor a slave onto itself
        # (a host without systemd: / is private), and that bind would hide the filesystem mounted
        # at volumes/ below it. A shared mount of its own keeps the layout as on a systemd host.
        _run(["mount", "--bind", str(self.data_root), str(self.data_root)])
        _run(["mount", "--make-shared", str(self.data_root)])
        self.image_file.unlink(missing_ok=True)
        _run(["truncate", "-s", f"{self.size_mb}M", str(self.image_file)])
        _run(["mkfs.xfs", "-q", "-f", str(self.image_file)])
        loop = _run(["losetup", "--find", "--show", str(self.image_file)]).stdout.strip()
        self.loop_file.write_text(loop)
        option = "prjquota" if self.quota else "noquota"
        mounted = _run(["mount", "-t", "xfs", "-o", option, loop, str(self.volumes)], check=False)
        if mounted.returncode != 0:
            reason = _kernel_says(loop) or mounted.stderr.strip()
            if self.quota and "quota" in reason.lower():
                raise QuotaUnsupported(reason)
            raise RuntimeError(f"mount -o {option} {loop} failed: {reason}")
        # The default network's bridge, made here: dockerd then takes it as it is (see the module's note).
        _run(["ip", "link", "add", DEFAULT_BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", DEFAULT_BRIDGE_ADDRESS, "dev", DEFAULT_BRIDGE])
        _run(["ip", "link", "set", DEFAULT_BRIDGE, "up"])
        self._start_dockerd(timeout)
        return self

    def _start_dockerd(self, timeout: float) -> None:
        config = self.run_dir / "daemon.json"  # not /etc/docker/daemon.json: the host engine's settings
        config.write_text(json.dumps({}))
        argv = [
            "dockerd",
            f"--config-file={config}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.run_dir / 'exec'}",
            f"--pidfile={self.pid_file}",
            f"--host={self.url}",
            f"--bridge={DEFAULT_BRIDGE}",
            "--iptables=false",
            "--ip-masq=false",
            "--log-level=warn",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        with open(self.log_file, "a") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                if self.client(timeout=5).ping():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer in {timeout:.0f} s:\n{self.log_tail()}")

    def down(self) -> None:
        """Stop dockerd (its containers with it), unmount, detach the loop device. Idempotent."""
        if self.sock.exists() and self._answers():
            try:  # containers hold the volumes' mounts: without them the unmount cannot fail
                client = self.client(timeout=30)
                for c in client.containers(all=True):
                    client.remove_container(c["Id"], force=True)
            except docker.errors.DockerException:
                pass
        pid = self._pid()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
        if _run(["mountpoint", "-q", str(self.volumes)], check=False).returncode == 0:
            _run(["umount", str(self.volumes)], check=False)
            if _run(["mountpoint", "-q", str(self.volumes)], check=False).returncode == 0:
                _run(["umount", "-l", str(self.volumes)], check=False)
        while _run(["mountpoint", "-q", str(self.data_root)], check=False).returncode == 0:
            if _run(["umount", str(self.data_root)], check=False).returncode != 0:
                _run(["umount", "-l", str(self.data_root)], check=False)
        _run(["ip", "link", "del", DEFAULT_BRIDGE], check=False)
        loops = {self.loop_file.read_text().strip()} if self.loop_file.exists() else set()
        if self.image_file.exists():  # also those a run that died before writing loop_file made
            listed = _run(["losetup", "-j", str(self.image_file)], check=False).stdout
            loops |= {line.split(":", 1)[0] for line in listed.splitlines() if line}
        for loop in sorted(d for d in loops if d):
            _run(["losetup", "-d", loop], check=False)
        self.loop_file.unlink(missing_ok=True)
        self.image_file.unlink(missing_ok=True)

    def _pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def _answers(self) -> bool:
        try:
            return self.client(timeout=5).ping()
        except Exception:  # noqa: BLE001
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- what the tests use -----------------------------------------------------------------------
    def client(self, timeout: int = 60) -> docker.APIClient:
        return docker.APIClient(base_url=self.url, version="auto", timeout=timeout)

    def free_bytes(self) -> int:
        st = os.statvfs(self.volumes)
        return st.f_bavail * st.f_frsize

    def load_image(self, tag: str) -> float:
        """Copy `tag` from the host engine unless this engine has the same image; seconds it took."""
        host = docker.from_env(version="auto", timeout=600).api
        wanted = host.inspect_image(tag)["Id"]
        try:
            if self.client().inspect_image(tag)["Id"] == wanted:
                return 0.0
        except docker.errors.ImageNotFound:
            pass
        started = time.monotonic()
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        try:
            _run(["docker", "-H", self.url, "load", "-q"], stdin=save.stdout, timeout=600)
        finally:
            save.stdout.close()
            save.wait(60)
        if save.returncode != 0:
            raise RuntimeError(f"docker save {tag} failed ({save.returncode})")
        return time.monotonic() - started

    def network(self, name: str, subnet: str, bridge: str) -> str:
        """A bridge network whose gateway (the subnet's first address) is this host, so a hub
        running here reaches the containers and they reach it. No iptables: nothing is isolated."""
        client = self.client()
        if not client.networks(names=[name]):
            gateway = subnet.rsplit(".", 1)[0] + ".1"
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=gateway)])
            client.create_network(name, driver="bridge", ipam=ipam, options={"com.docker.network.bridge.name": bridge})
        return name


def _kernel_says(loop: str) -> str:
    """The kernel's last line about this loop device (why a mount failed)."""
    proc = subprocess.run(["dmesg"], capture_output=True, text=True)
    name = Path(loop).name
    lines = [line for line in proc.stdout.splitlines() if f"({name})" in line or f" {name}:" in line]
    return lines[-1].split("]", 1)[-1].strip() if lines else ""
