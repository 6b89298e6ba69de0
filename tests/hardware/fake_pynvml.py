"""STAND-IN for NVIDIA's `pynvml` module, for GPU layouts this machine does not have.

Data-driven: `make(layout)` returns a module with the pynvml functions gpuhub
uses, answering from `layout`, and raising the *real* pynvml error classes
(NVMLError_NotSupported, NVMLError_NotFound, NVMLError_LibraryNotFound, ...), so
code under test catches exactly what it would catch on a GPU host.

    layout = {
      "init_error": None | "LibraryNotFound" | "DriverNotLoaded" | "NoPermission",
      "gpus": [
        {"uuid": "GPU-…", "name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920,
         "mig": "NotSupported" | "disabled" | [  # enabled, with these MIG devices
             {"uuid": "MIG-…", "name": "NVIDIA A100-SXM4-80GB MIG 1g.10gb", "memory_mib": 9856, "slices": 1},
             None,  # an empty MIG slot (NVMLError_NotFound)
         ],
         "profiles": [("1g.10gb", 1, 9856), ...],  # GPU-instance profiles it supports
         "fail": {"nvmlDeviceGetMemoryInfo": "GpuIsLost"}},  # optional, on a GPU or a MIG device:
      ],                                                    # these calls on it raise that error
    }

`layout` is read on every call, never copied: change it between two `discover()` calls to
simulate a GPU that disappears (or appears) while the hub runs.
"""

from __future__ import annotations

import types

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
    "GpuIsLost": "GPU_IS_LOST",
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
    def __init__(self, spec: dict, parent: _Handle | None = None):
        self.spec, self.parent = spec, parent


def _failing(spec: dict, call: str) -> None:
    """Raise the error the spec's "fail" names for this call, if any."""
    error = spec.get("fail", {}).get(call)
    if error:
        raise _error(error)


def make(layout: dict) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    for name in dir(real):
        if name.startswith(("NVMLError", "NVML_")):
            setattr(m, name, getattr(real, name))
    state = {"init": False}

    def need_init():
        if not state["init"]:
            raise _error("Uninitialized")

    def nvmlInit():
        if layout.get("init_error"):
            raise _error(layout["init_error"])
        state["init"] = True

    def nvmlShutdown():
        need_init()
        state["init"] = False

    def nvmlDeviceGetCount():
        need_init()
        return len(layout.get("gpus", []))

    def nvmlDeviceGetHandleByIndex(i):
        need_init()
        _failing(layout["gpus"][i], "nvmlDeviceGetHandleByIndex")
        return _Handle(layout["gpus"][i])

    def nvmlDeviceGetUUID(h):
        _failing(h.spec, "nvmlDeviceGetUUID")
        return h.spec["uuid"]

    def nvmlDeviceGetName(h):
        _failing(h.spec, "nvmlDeviceGetName")
        return h.spec["name"]

    def nvmlDeviceGetMemoryInfo(h):
        _failing(h.spec, "nvmlDeviceGetMemoryInfo")
        return types.SimpleNamespace(total=h.spec["memory_mib"] * 2**20, used=0, free=h.spec["memory_mib"] * 2**20)

    def nvmlDeviceGetMigMode(h):
        _failing(h.spec, "nvmlDeviceGetMigMode")
        mig = h.spec.get("mig", "NotSupported")
        if mig == "NotSupported":
            raise _error("NotSupported")
        enabled = isinstance(mig, list)
        return [real.NVML_DEVICE_MIG_ENABLE if enabled else real.NVML_DEVICE_MIG_DISABLE] * 2

    def nvmlDeviceGetMaxMigDeviceCount(h):
        _failing(h.spec, "nvmlDeviceGetMaxMigDeviceCount")
        mig = h.spec.get("mig")
        return len(mig) if isinstance(mig, list) else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(h, j):
        slot = h.spec["mig"][j]
        if slot is None:
            raise _error("NotFound")
        _failing(slot, "nvmlDeviceGetMigDeviceHandleByIndex")
        return _Handle(slot, h)

    def nvmlDeviceGetAttributes(h):
        _failing(h.spec, "nvmlDeviceGetAttributes")
        return types.SimpleNamespace(gpuInstanceSliceCount=h.spec.get("slices", 1))

    def nvmlDeviceGetGpuInstanceProfileInfo(h, profile, version=2):
        _failing(h.spec, "nvmlDeviceGetGpuInstanceProfileInfo")
        supported = h.spec.get("profiles", [])
        index = (
            [getattr(real, c) for c in _PROFILE_CONSTS].index(profile)
            if profile in [getattr(real, c) for c in _PROFILE_CONSTS]
            else None
        )
        if index is None or index >= len(supported):
            raise _error("NotSupported")
        name, slices, memory = supported[index]
        return types.SimpleNamespace(name=f"MIG {name}".encode(), sliceCount=slices, memorySizeMB=memory)

    for fn in (
        nvmlInit,
        nvmlShutdown,
        nvmlDeviceGetCount,
        nvmlDeviceGetHandleByIndex,
        nvmlDeviceGetUUID,
        nvmlDeviceGetName,
        nvmlDeviceGetMemoryInfo,
        nvmlDeviceGetMigMode,
        nvmlDeviceGetMaxMigDeviceCount,
        nvmlDeviceGetMigDeviceHandleByIndex,
        nvmlDeviceGetAttributes,
        nvmlDeviceGetGpuInstanceProfileInfo,
    ):
        setattr(m, fn.__name__, fn)
    return m
