"""The telemetry sampler on a real NVIDIA GPU: busy under a bf16 matmul loop, idle once it stops.

A child process allocates two 8192x8192 bf16 tensors on cuda:0, multiplies them for BUSY_S
seconds, then keeps them allocated for IDLE_S more seconds with no kernels running. `Sampler`
reads the GPU every second throughout. Busy samples (after the first two) must read activity
>= 90, idle samples <= 5 (one sample of lag allowed when the figure is the utilization rate).

Skipped where there is no GPU, NVML or torch with CUDA. Run on the device machine:

    python -m pytest tests/gpu/test_telemetry_real.py -s
    python -m tests.gpu.test_telemetry_real    # the same, without pytest

GPUHUB_RESULTS=<folder> also writes the table of samples to <folder>/telemetry-real.txt.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

try:
    import pytest
except ImportError:  # run as a script on a GPU host without pytest
    pytest = None

from spawner import inventory
from spawner.devices import Device
from spawner.telemetry import Reading, Sampler

BUSY_S = 8.0
IDLE_S = 5.0
EVERY_S = 1.0
BUSY_AT_LEAST = 90.0
IDLE_AT_MOST = 5.0

CHILD = """
import sys, time, torch
busy_s = float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
c = a @ b  # cuBLAS set up before the sampling starts
torch.cuda.synchronize()
print("ready", torch.cuda.get_device_properties(0).uuid, flush=True)
sys.stdin.readline()  # "go"
print("busy", flush=True)
end = time.perf_counter() + busy_s
n = 0
while time.perf_counter() < end:
    for _ in range(10):
        c = a @ b
    torch.cuda.synchronize()  # keeps the queue short, so "idle" is printed when the GPU is idle
    n += 10
print("idle", n, flush=True)
sys.stdin.readline()  # tensors stay allocated until the parent closes stdin
"""


def _skip_reason() -> str:
    """Why this host cannot run the test ("" if it can)."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return f"no NVIDIA driver ({e})"
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return "no NVIDIA GPU"
    finally:
        pynvml.nvmlShutdown()
    check = "import torch; assert torch.cuda.is_available()"
    if subprocess.run([sys.executable, "-c", check], capture_output=True).returncode != 0:
        return "no torch with CUDA"
    return ""


class Timed:
    """pynvml, timing every NVML call made through it."""

    def __init__(self, module):
        self.module, self.seconds = module, {}

    def __getattr__(self, name):
        found = getattr(self.module, name)
        if not name.startswith("nvml") or not callable(found):
            return found

        def timed(*args):
            t0 = time.perf_counter()
            try:
                return found(*args)
            finally:
                self.seconds.setdefault(name, []).append(time.perf_counter() - t0)

        return timed


@dataclass
class Sample:
    at: float  # perf_counter() when Sampler.sample() was called
    reading: Reading
    sample_ms: float  # how long Sampler.sample() took
    phase: str = ""  # "before", "busy", "end" (its interval spans the end of the loop) or "idle"


@dataclass
class Run:
    device: Device
    gpm_supported: bool
    samples: list[Sample] = field(default_factory=list)
    go: float = 0.0  # perf_counter() when the child was told to start
    matmuls: int = 0
    busy_s: float = 0.0
    nvml_ms: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def measure() -> Run:
    import pynvml

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(BUSY_S)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[tuple[float, list[str]]] = queue.Queue()

    def read() -> None:
        for line in child.stdout:
            lines.put((time.perf_counter(), line.split()))

    threading.Thread(target=read, daemon=True).start()
    try:
        _, ready = lines.get(timeout=120)
        assert ready[0] == "ready", ready
        device = _device(inventory.canonical_uuid(f"GPU-{ready[1]}"))
        nvml = Timed(pynvml)
        run = Run(device, gpm_supported=_gpm_supported(pynvml, device))
        with Sampler(nvml) as sampler:

            def take() -> None:
                t0 = time.perf_counter()
                reading = sampler.sample([device])[device.uuid]
                run.samples.append(Sample(t0, reading, (time.perf_counter() - t0) * 1e3))

            take()  # tensors allocated, no kernels; primes GPM
            time.sleep(EVERY_S)
            take()
            run.go = time.perf_counter()
            child.stdin.write("go\n")
            child.stdin.flush()
            busy_at, _ = lines.get(timeout=30)
            ended_at = None
            k = 0
            while ended_at is None or sum(s.at > ended_at for s in run.samples) <= IDLE_S / EVERY_S:
                k += 1
                if k * EVERY_S > BUSY_S + IDLE_S + 30:
                    raise RuntimeError("the matmul loop never reported its end")
                time.sleep(max(0.0, run.go + k * EVERY_S - time.perf_counter()))
                take()
                if ended_at is None and not lines.empty():
                    ended_at, idle = lines.get()
                    run.matmuls, run.busy_s = int(idle[1]), ended_at - busy_at
        run.nvml_ms = {name: [s * 1e3 for s in seconds] for name, seconds in nvml.seconds.items()}
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    previous = None
    for s in run.samples:
        if s.at < run.go:
            s.phase = "before"
        elif s.at < ended_at:
            s.phase = "busy"
        else:
            s.phase = "idle" if previous is not None and previous.at >= ended_at else "end"
        previous = s
    run.failures = _judge(run)
    return run


def _device(uuid: str) -> Device:
    found = inventory.discover()
    whole = [d for d in found.devices if not d.is_mig]
    for d in whole:
        if d.uuid == uuid:
            return d
    if len(whole) == 1 and len(found.devices) == 1:  # torch spelled the UUID otherwise; one GPU anyway
        return whole[0]
    raise RuntimeError(f"cuda:0 ({uuid}) is not a whole GPU NVML lists (MIG mode?): {found.devices} {found.note}")


def _gpm_supported(pynvml, device: Device) -> bool:
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByUUID(device.uuid)
        return bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
    except pynvml.NVMLError:
        return False
    finally:
        pynvml.nvmlShutdown()


def _judge(run: Run) -> list[str]:
    failures = []
    not_ok = [s for s in run.samples if not s.reading.ok]
    if not_ok:
        failures.append(f"{len(not_ok)} reading(s) not ok: {not_ok[0].reading.error}")
    busy = [s for s in run.samples if s.phase == "busy"]
    if len(busy) < 4:
        failures.append(f"only {len(busy)} samples while busy")
    for s in busy[2:]:
        if s.reading.activity is None or s.reading.activity < BUSY_AT_LEAST:
            failures.append(f"busy at t={s.at - run.go:.1f}s read activity {s.reading.activity} (< {BUSY_AT_LEAST})")
    idle = [s for s in run.samples if s.phase == "idle"]
    for n, s in enumerate(idle):
        lag_allowed = n == 0 and s.reading.activity_source == "utilization"
        if not lag_allowed and (s.reading.activity is None or s.reading.activity > IDLE_AT_MOST):
            failures.append(f"idle at t={s.at - run.go:.1f}s read activity {s.reading.activity} (> {IDLE_AT_MOST})")
    if run.gpm_supported and not any(s.reading.activity_source == "gpm-sm" for s in busy):
        failures.append("GPM is supported but no busy sample came from it")
    return failures


def report(run: Run) -> str:
    def figure(value):
        return "-" if value is None else f"{value:.1f}"

    out = [
        f"device: {run.device.uuid} {run.device.model} ({run.device.memory_mib} MiB)",
        f"GPM supported (nvmlGpmQueryDeviceSupport): {'yes' if run.gpm_supported else 'no'}",
        f"load: bf16 8192x8192 matmul on cuda:0, {run.matmuls} matmuls in {run.busy_s:.2f} s "
        f"({2 * 8192**3 * run.matmuls / max(run.busy_s, 1e-9) / 1e12:.0f} TFLOP/s); sampled every {EVERY_S:.0f} s",
        "",
        f"{'t/s':>6} {'phase':<7} {'util%':>6} {'gpm_sm%':>8} {'activity':>9} {'source':<12} {'mem MiB':>8} "
        f"{'sample ms':>9}  note",
    ]
    for s in run.samples:
        r = s.reading
        memory = "-" if r.memory_used is None else str(r.memory_used // 2**20)
        note = r.error or r.no_activity_reason
        out.append(
            f"{s.at - run.go:6.2f} {s.phase:<7} {figure(r.utilization):>6} {figure(r.gpm_sm):>8} "
            f"{figure(r.activity):>9} {r.activity_source or '-':<12} {memory:>8} {s.sample_ms:9.2f}  {note}".rstrip()
        )
    out += ["", "NVML call latency (ms): mean / max / calls"]
    for name, ms in sorted(run.nvml_ms.items()):
        out.append(f"  {name:<46} {sum(ms) / len(ms):7.3f} / {max(ms):7.3f} / {len(ms)}")
    per_sample = [s.sample_ms for s in run.samples]
    out.append(
        f"Sampler.sample() for one GPU: mean {sum(per_sample) / len(per_sample):.2f} ms, max {max(per_sample):.2f} ms"
    )
    out += ["", "verdict: " + ("PASS" if not run.failures else "FAIL")] + [f"  {f}" for f in run.failures]
    return "\n".join(out)


def _publish(text: str) -> None:
    print("\n" + text)
    folder = os.environ.get("GPUHUB_RESULTS")
    if folder:
        with open(os.path.join(folder, "telemetry-real.txt"), "w") as f:
            f.write(text + "\n")


if pytest is not None:
    pytestmark = [pytest.mark.gpu]

    def test_a_matmul_loop_reads_busy_and_its_stop_reads_idle_at_once():
        reason = _skip_reason()
        if reason:
            pytest.skip(reason)
        run = measure()
        _publish(report(run))
        assert not run.failures


if __name__ == "__main__":
    reason = _skip_reason()
    if reason:
        sys.exit(f"skipped: {reason}")
    run = measure()
    _publish(report(run))
    sys.exit(1 if run.failures else 0)
