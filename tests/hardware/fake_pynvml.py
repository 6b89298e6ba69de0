"""STAND-IN for NVIDIA's `pynvml` module, for GPU layouts this machine does not have.

Data-driven: `make(layout)` returns a module with the pynvml functions gpuhub
uses, answering from `layout`, and raising the *real* pynvml error classes
(NVMLError_NotSupported, NVMLError_NotFound, NVMLError_LibraryNotFound, ...), so
code under test catches exactly what it would catch on a GPU host.

    layout = {
      "init_error": None | "LibraryNotFound" | "DriverNotLoaded" | "NoPermission",
      "latency_ms": 0.1,  # optional: every call sleeps this long (releasing the GIL, as ctypes calls do)
      "fail": {"nvmlGpmSampleAlloc": "Memory"},  # optional: calls that concern no device raise that error
      "gpus": [
        {"uuid": "GPU-…", "name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920,
         "memory_used_mib": 1490,  # optional, default 0
         "utilization": 37,  # nvmlDeviceGetUtilizationRates(h).gpu; "NotSupported"; default 0
         "gpm": 35.5,  # GPM SM utilization percent, or "NotSupported" (the default: GPUs before Hopper)
         "mig": "NotSupported" | "disabled" | [  # enabled, with these MIG devices
             {"uuid": "MIG-…", "name": "NVIDIA A100-SXM4-80GB MIG 1g.10gb", "memory_mib": 9856, "slices": 1,
              "memory_used_mib": 12,
              "gpm": 80,  # GPM SM utilization of this slice (default 0); none if the GPU's "gpm" is NotSupported
              "gpu_instance_id": 7},  # default: the slot's index
             None,  # an empty MIG slot (NVMLError_NotFound)
         ],
         "profiles": [("1g.10gb", 1, 9856), ...],  # GPU-instance profiles it supports
         "fail": {"nvmlDeviceGetMemoryInfo": "GpuIsLost"}},  # optional, on a GPU or a MIG device:
      ],                                                    # these calls on it raise that error
    }

`layout` is read on every call, never copied: change it between two `discover()` calls to
simulate a GPU that disappears (or appears) while the hub runs. It may also be a callable that
returns the layout (the stand-in module in `nvml_standin/` re-reads a JSON file that way). A
handle names its device by UUID, so it follows the device through such changes; a handle whose
device has left the layout raises GpuIsLost, as NVML does for a GPU that fell off the bus.

GPM samples are real `c_nvmlGpmSample_t` pointers (to buffers of this module), so code under
test fills the real `c_nvmlGpmMetricsGet_t` struct. A sample records the spec's "gpm" figure
when it is taken; `nvmlGpmMetricsGet` reports the figure of the second sample for
NVML_GPM_METRIC_SM_UTIL and NVML_ERROR_NOT_SUPPORTED for any other metric.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import time
import types
from collections.abc import Callable

import pynvml as real


def _error(name: str) -> real.NVMLError:
    return real.NVMLError(getattr(real, f"NVML_ERROR_{_CODES[name]}"))


_CODES = {
    "LibraryNotFound": "LIBRARY_NOT_FOUND",
    "DriverNotLoaded": "DRIVER_NOT_LOADED",
    "NoPermission": "NO_PERMISSION",
    "NotSupported": "NOT_SUPPORTED",
    "NotFound": "NOT_FOUND",
    "Uninitialized": "UNINITIALIZED",
    "InvalidArgument": "INVALID_ARGUMENT",
    "GpuIsLost": "GPU_IS_LOST",
    "FunctionNotFound": "FUNCTION_NOT_FOUND",
    "Memory": "MEMORY",
    "Unknown": "UNKNOWN",
}

_PROFILE_CONSTS = [
    "NVML_GPU_INSTANCE_PROFILE_1_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_2_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_3_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_4_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_7_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1",
    "NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1",
]


class _Handle:
    """A GPU (slot None) or one of its MIG devices, found again in the current layout on every call."""

    def __init__(self, gpu: int, slot: int | None, uuid: str | None):
        self.gpu, self.slot, self.uuid = gpu, slot, uuid


def _failing(spec: dict, call: str) -> None:
    """Raise the error the spec's "fail" names for this call, if any."""
    error = spec.get("fail", {}).get(call)
    if error:
        raise _error(error)


def _find(layout: dict, h: _Handle) -> tuple[dict, dict | None]:
    """(spec, parent GPU spec or None) of a handle's device: by UUID, or by position if it had none."""
    gpus = layout.get("gpus", [])
    if h.uuid is None:
        try:
            gpu = gpus[h.gpu]
            return (gpu, None) if h.slot is None else (gpu["mig"][h.slot], gpu)
        except (IndexError, KeyError, TypeError):
            raise _error("GpuIsLost") from None
    for gpu in gpus:
        if h.slot is None and gpu.get("uuid") == h.uuid:
            return gpu, None
        slots = gpu.get("mig")
        if h.slot is not None and isinstance(slots, list):
            for spec in slots:
                if spec is not None and spec.get("uuid") == h.uuid:
                    return spec, gpu
    raise _error("GpuIsLost")


def _instance_id(gpu: dict, j: int) -> int:
    return gpu["mig"][j].get("gpu_instance_id", j)


def make(layout: dict | Callable[[], dict]) -> types.ModuleType:
    current = layout if callable(layout) else lambda: layout
    m = types.ModuleType("pynvml")
    for name in dir(real):
        if name.startswith(("NVMLError", "NVML_", "c_nvml")):
            setattr(m, name, getattr(real, name))
    state = {"init": 0}  # NVML counts nvmlInit calls; nvmlShutdown undoes one
    samples: dict[int, dict] = {}  # address of a sample buffer -> what was read into it
    buffers: dict[int, ctypes.Array] = {}  # keeps the buffers alive
    taken = itertools.count(1)

    def need_init():
        if not state["init"]:
            raise _error("Uninitialized")

    def device(h) -> dict:
        need_init()
        return _find(current(), h)[0]

    def mig_only(h) -> tuple[dict, dict]:
        spec, gpu = _find(current(), h)
        if gpu is None:
            raise _error("InvalidArgument")
        return spec, gpu

    def address(sample) -> int:
        return ctypes.cast(sample, ctypes.c_void_p).value or 0

    def nvmlInit():
        if current().get("init_error"):
            raise _error(current()["init_error"])
        state["init"] += 1

    def nvmlShutdown():
        need_init()
        state["init"] -= 1

    def nvmlDeviceGetCount():
        need_init()
        return len(current().get("gpus", []))

    def nvmlDeviceGetHandleByIndex(i):
        need_init()
        gpu = current()["gpus"][i]
        _failing(gpu, "nvmlDeviceGetHandleByIndex")
        return _Handle(i, None, gpu.get("uuid"))

    def nvmlDeviceGetHandleByUUID(uuid):
        need_init()
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for i, gpu in enumerate(current().get("gpus", [])):
            slots = gpu.get("mig") if isinstance(gpu.get("mig"), list) else []
            for j, spec in [(None, gpu), *enumerate(slots)]:
                if spec is not None and spec.get("uuid") == uuid:
                    _failing(spec, "nvmlDeviceGetHandleByUUID")
                    return _Handle(i, j, uuid)
        raise _error("NotFound")

    def nvmlDeviceGetUUID(h):
        spec = _find(current(), h)[0]
        _failing(spec, "nvmlDeviceGetUUID")
        return spec["uuid"]

    def nvmlDeviceGetName(h):
        spec = _find(current(), h)[0]
        _failing(spec, "nvmlDeviceGetName")
        return spec["name"]

    def nvmlDeviceGetMemoryInfo(h):
        spec = _find(current(), h)[0]
        _failing(spec, "nvmlDeviceGetMemoryInfo")
        total, used = spec["memory_mib"] * 2**20, spec.get("memory_used_mib", 0) * 2**20
        return types.SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(h):
        spec, gpu = _find(current(), h)
        _failing(spec, "nvmlDeviceGetUtilizationRates")
        figure = spec.get("utilization", 0)
        if gpu is not None or figure == "NotSupported":  # NVML has no utilization rate for a MIG device
            raise _error("NotSupported")
        return types.SimpleNamespace(gpu=int(figure), memory=0)

    def nvmlDeviceGetMigMode(h):
        spec = _find(current(), h)[0]
        _failing(spec, "nvmlDeviceGetMigMode")
        mig = spec.get("mig", "NotSupported")
        if mig == "NotSupported":
            raise _error("NotSupported")
        enabled = isinstance(mig, list)
        return [real.NVML_DEVICE_MIG_ENABLE if enabled else real.NVML_DEVICE_MIG_DISABLE] * 2

    def nvmlDeviceGetMaxMigDeviceCount(h):
        spec = _find(current(), h)[0]
        _failing(spec, "nvmlDeviceGetMaxMigDeviceCount")
        mig = spec.get("mig")
        return len(mig) if isinstance(mig, list) else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(h, j):
        slot = _find(current(), h)[0]["mig"][j]
        if slot is None:
            raise _error("NotFound")
        _failing(slot, "nvmlDeviceGetMigDeviceHandleByIndex")
        return _Handle(h.gpu, j, slot.get("uuid"))

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(h):
        spec, gpu = mig_only(h)
        _failing(spec, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        return _Handle(h.gpu, None, gpu.get("uuid"))

    def nvmlDeviceGetGpuInstanceId(h):
        spec, gpu = mig_only(h)
        _failing(spec, "nvmlDeviceGetGpuInstanceId")
        return spec.get("gpu_instance_id", next(j for j, s in enumerate(gpu["mig"]) if s is spec))

    def nvmlDeviceGetAttributes(h):
        spec = _find(current(), h)[0]
        _failing(spec, "nvmlDeviceGetAttributes")
        return types.SimpleNamespace(gpuInstanceSliceCount=spec.get("slices", 1))

    def nvmlDeviceGetGpuInstanceProfileInfo(h, profile, version=2):
        spec = _find(current(), h)[0]
        _failing(spec, "nvmlDeviceGetGpuInstanceProfileInfo")
        supported = spec.get("profiles", [])
        index = (
            [getattr(real, c) for c in _PROFILE_CONSTS].index(profile)
            if profile in [getattr(real, c) for c in _PROFILE_CONSTS]
            else None
        )
        if index is None or index >= len(supported):
            raise _error("NotSupported")
        name, slices, memory = supported[index]
        return types.SimpleNamespace(name=f"MIG {name}".encode(), sliceCount=slices, memorySizeMB=memory)

    def nvmlGpmQueryDeviceSupport(h):
        spec, gpu = _find(current(), h)
        _failing(spec, "nvmlGpmQueryDeviceSupport")
        support = real.c_nvmlGpmSupport_t()
        support.version = real.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = (gpu or spec).get("gpm", "NotSupported") != "NotSupported"
        return support

    def nvmlGpmSampleAlloc():
        need_init()
        _failing(current(), "nvmlGpmSampleAlloc")
        buffer = ctypes.create_string_buffer(8)
        sample = ctypes.cast(buffer, real.c_nvmlGpmSample_t)
        buffers[address(sample)] = buffer
        samples[address(sample)] = {}
        return sample

    def nvmlGpmSampleFree(sample):
        _failing(current(), "nvmlGpmSampleFree")
        if address(sample) not in samples:
            raise _error("InvalidArgument")
        del samples[address(sample)], buffers[address(sample)]

    def record(sample, where: str, spec: dict, figure) -> None:
        if address(sample) not in samples:
            raise _error("InvalidArgument")
        if figure == "NotSupported":
            raise _error("NotSupported")
        samples[address(sample)] = {"where": where, "spec": spec, "figure": float(figure), "n": next(taken)}

    def nvmlGpmSampleGet(h, sample):
        need_init()
        spec, gpu = _find(current(), h)
        _failing(spec, "nvmlGpmSampleGet")
        if gpu is not None:  # a MIG device is read through its GPU: nvmlGpmMigSampleGet
            raise _error("NotSupported")
        record(sample, spec.get("uuid", ""), spec, spec.get("gpm", "NotSupported"))
        return sample

    def nvmlGpmMigSampleGet(h, gpu_instance_id, sample):
        gpu = device(h)
        _failing(gpu, "nvmlGpmMigSampleGet")
        slots = gpu.get("mig") if isinstance(gpu.get("mig"), list) else []
        found = [s for j, s in enumerate(slots) if s is not None and _instance_id(gpu, j) == gpu_instance_id]
        if not found:
            raise _error("NotFound")
        _failing(found[0], "nvmlGpmMigSampleGet")
        figure = "NotSupported" if gpu.get("gpm", "NotSupported") == "NotSupported" else found[0].get("gpm", 0)
        record(sample, f"{gpu.get('uuid')}/{gpu_instance_id}", found[0], figure)
        return sample

    def nvmlGpmMetricsGet(metrics_get):
        need_init()
        first, second = (samples.get(address(s)) for s in (metrics_get.sample1, metrics_get.sample2))
        if metrics_get.version != real.NVML_GPM_METRICS_GET_VERSION or not first or not second:
            raise _error("InvalidArgument")
        _failing(second["spec"], "nvmlGpmMetricsGet")
        if first["where"] != second["where"] or first["n"] >= second["n"]:
            raise _error("InvalidArgument")
        for i in range(metrics_get.numMetrics):
            metric = metrics_get.metrics[i]
            if metric.metricId == real.NVML_GPM_METRIC_SM_UTIL:
                metric.nvmlReturn, metric.value = real.NVML_SUCCESS, second["figure"]
            else:
                metric.nvmlReturn, metric.value = real.NVML_ERROR_NOT_SUPPORTED, 0.0
        return metrics_get

    def slow(fn):
        @functools.wraps(fn)
        def call(*args):
            latency = current().get("latency_ms", 0)
            if latency:
                time.sleep(latency / 1000)
            return fn(*args)

        return call

    for fn in (
        nvmlInit,
        nvmlShutdown,
        nvmlDeviceGetCount,
        nvmlDeviceGetHandleByIndex,
        nvmlDeviceGetHandleByUUID,
        nvmlDeviceGetUUID,
        nvmlDeviceGetName,
        nvmlDeviceGetMemoryInfo,
        nvmlDeviceGetUtilizationRates,
        nvmlDeviceGetMigMode,
        nvmlDeviceGetMaxMigDeviceCount,
        nvmlDeviceGetMigDeviceHandleByIndex,
        nvmlDeviceGetDeviceHandleFromMigDeviceHandle,
        nvmlDeviceGetGpuInstanceId,
        nvmlDeviceGetAttributes,
        nvmlDeviceGetGpuInstanceProfileInfo,
        nvmlGpmQueryDeviceSupport,
        nvmlGpmSampleAlloc,
        nvmlGpmSampleFree,
        nvmlGpmSampleGet,
        nvmlGpmMigSampleGet,
        nvmlGpmMetricsGet,
    ):
        setattr(m, fn.__name__, slow(fn))
    return m
