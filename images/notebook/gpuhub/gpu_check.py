"""gpu-check: is this server ready to train? Also usable as a notebook's first cell:

    import gpu_check; gpu_check.main([])

Prints PyTorch / CUDA / cuDNN / NCCL versions and the visible devices (names,
UUIDs, memory, MIG or not), times bf16 / fp16 / fp32 matrix products (TFLOP/s),
checks that mixed precision (autocast + GradScaler) trains, and exits non-zero
with a plain explanation when something is wrong. On a CPU-only server
(NVIDIA_VISIBLE_DEVICES=void, what gpuhub sets for CPU profiles) it says so and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

NO_GPU_VALUES = ("", "void", "none", "NoDevFiles")


def expected_devices() -> list[str]:
    value = os.environ.get("NVIDIA_VISIBLE_DEVICES", "")
    return [] if value in NO_GPU_VALUES else [d for d in value.split(",") if d]


def nvml_devices() -> dict[str, dict]:
    """UUID -> facts from NVML, when the driver's library is reachable."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    found = {}
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            try:
                mig = pynvml.nvmlDeviceGetMigMode(h)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError:
                mig = False
            found[uuid] = {"name": pynvml.nvmlDeviceGetName(h), "mig_mode": mig, "driver": driver}
    finally:
        pynvml.nvmlShutdown()
    return found


def matmul_tflops(torch, device: str, dtype, n: int, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            a @ b
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds = time.perf_counter() - t
    return 2 * n**3 * repeats / seconds / 1e12


def amp_trains(torch, device: str) -> str:
    """A few mixed-precision steps of a tiny model; returns a problem, or ''."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device, enabled=device == "cuda")
    x = torch.randn(256, 64, device=device)
    y = x[:, :1] * 2
    losses = []
    for _ in range(20):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=dtype):
            loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach().item())
    if not all(map(lambda v: v == v and v < float("inf"), losses)):
        return f"mixed-precision training produced non-finite losses: {losses[-3:]}"
    if losses[-1] >= losses[0]:
        return f"mixed-precision training did not learn (loss {losses[0]:.4f} -> {losses[-1]:.4f})"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=0, help="matrix size (default 8192 on GPU, 1024 on CPU)")
    parser.add_argument("--repeats", type=int, default=0, help="timed products per dtype (default 20 GPU / 3 CPU)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    problems: list[str] = []
    report: dict = {"python": platform.python_version()}
    expected = expected_devices()
    print(f"Python   {report['python']}")
    try:
        import torch
    except ImportError:
        print("PROBLEM: PyTorch is not installed in this image; rebuild it with TORCH=base, pip or wheelhouse.")
        return 1
    report.update(torch=torch.__version__, cuda=torch.version.cuda)
    print(f"PyTorch  {torch.__version__} (built for CUDA {torch.version.cuda or '-, a CPU-only build'})")

    gpu = False
    if expected:
        print(f"Granted  {', '.join(expected)} (NVIDIA_VISIBLE_DEVICES)")
        try:
            gpu = torch.cuda.is_available() and torch.cuda.device_count() > 0
            cuda_error = ""
        except Exception as e:  # torch raises RuntimeError subclasses with the driver's reason
            cuda_error = str(e).splitlines()[0]
        if not gpu:
            if torch.version.cuda is None:
                problems.append("GPUs were granted but this PyTorch is a CPU-only build: use a CUDA build of torch")
            elif "driver" in cuda_error.lower() or "too old" in cuda_error.lower():
                problems.append(
                    f"the NVIDIA driver on this host is too old for CUDA {torch.version.cuda} in this image"
                    f" ({cuda_error}); ask an admin to update the driver or use an image built for older CUDA"
                )
            else:
                problems.append(
                    "GPUs were granted but PyTorch sees none: the container was started without the NVIDIA"
                    f" runtime or the devices are not reachable{f' ({cuda_error})' if cuda_error else ''}"
                )
    else:
        print(
            "CPU only: no GPU was granted to this server (NVIDIA_VISIBLE_DEVICES="
            f"{os.environ.get('NVIDIA_VISIBLE_DEVICES', 'unset')}), as its profile asked."
        )

    if gpu:
        report.update(cudnn=torch.backends.cudnn.version(), nccl=".".join(map(str, torch.cuda.nccl.version())))
        print(f"cuDNN    {report['cudnn']}   NCCL {report['nccl']}")
        nvml = nvml_devices()
        if nvml:
            print(f"Driver   {next(iter(nvml.values()))['driver']}")
        report["devices"] = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            uuid = str(getattr(p, "uuid", ""))
            uuid = uuid if uuid.startswith(("GPU-", "MIG-")) or not uuid else f"GPU-{uuid}"
            is_mig = "MIG" in p.name or any(d.startswith("MIG-") for d in expected)
            report["devices"].append(
                {
                    "index": i,
                    "name": p.name,
                    "uuid": uuid,
                    "memory_mib": p.total_memory // 2**20,
                    "mig": is_mig,
                    "sm": f"{p.major}.{p.minor}",
                }
            )
            print(
                f"GPU {i}    {p.name}  {p.total_memory / 2**30:.1f} GiB  sm_{p.major}{p.minor}"
                f"  {'MIG slice' if is_mig else 'whole GPU'}  {uuid}"
            )
        if torch.cuda.device_count() != len(expected):
            problems.append(f"{len(expected)} device(s) were granted but PyTorch sees {torch.cuda.device_count()}")

    device = "cuda" if gpu else "cpu"
    n = args.size or (8192 if gpu else 1024)
    repeats = args.repeats or (20 if gpu else 3)
    dtypes = [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)]
    report["matmul_tflops"] = {}
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    try:
        for name, dtype in dtypes if gpu else dtypes[::2]:
            tflops = matmul_tflops(torch, device, dtype, n, repeats)
            report["matmul_tflops"][name] = round(tflops, 2)
            print(f"matmul   {name} {n}x{n}x{n} on {device}: {tflops:8.2f} TFLOP/s")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    problem = amp_trains(torch, device)
    print(f"AMP      autocast + GradScaler on {device}: {'OK' if not problem else 'FAILED'}")
    if problem:
        problems.append(problem)
    report["problems"] = problems
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    for p in problems:
        print(f"PROBLEM: {p}")
    print("gpu-check: OK" if not problems else f"gpu-check: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
