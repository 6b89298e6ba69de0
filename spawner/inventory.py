"""What devices this host can hand out: from NVML, or declared in config. No Docker.

NVML is blocking C calls; callers run `discover()` in a thread, never on the
hub's event loop. NVML missing, no driver, no GPUs: an empty inventory and a
clear note, so the hub still serves CPU profiles.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .devices import Device

_MIG_NAME = re.compile(r"MIG\s+(\d+g\.\d+gb(?:[+-]\w+)?)", re.IGNORECASE)
_MIG_PROFILE = re.compile(r"^\d+g\.\d+gb(?:[+-](?:me|gfx|me\.all))?$")


class InventoryError(ValueError):
    """Static device configuration is malformed (one line naming the entry)."""


@dataclass(frozen=True)
class Inventory:
    devices: tuple[Device, ...]
    source: str  # "nvml", "static" or "none"
    note: str = ""  # why there are no devices, for the hub log
    mig_profiles: frozenset[str] = frozenset()  # profiles the GPUs could be partitioned into


def is_mig_profile_name(name: str) -> bool:
    return bool(_MIG_PROFILE.match(name))


def from_static(entries: Iterable[Mapping[str, Any] | str], exclude: Iterable[str] = ()) -> Inventory:
    """Devices declared in config: a UUID string, or a dict with uuid/model/memory_mib/mig_profile/parent."""
    excluded = set(exclude)
    devices: list[Device] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"uuid": entry}
        if not isinstance(entry, Mapping):
            raise InventoryError(f"static device #{i + 1} must be a UUID string or a mapping, got {entry!r}")
        unknown = set(entry) - {"uuid", "model", "memory_mib", "mig_profile", "parent"}
        if unknown:
            raise InventoryError(f"static device #{i + 1} has unknown keys: {', '.join(sorted(unknown))}")
        uuid = str(entry.get("uuid", ""))
        profile = entry.get("mig_profile")
        if not re.match(r"^(GPU|MIG)-[0-9A-Za-z-]+$", uuid):
            raise InventoryError(f"static device #{i + 1}: uuid {uuid!r} is not a GPU-… or MIG-… UUID")
        if uuid in seen:
            raise InventoryError(f"static device {uuid} is listed twice")
        if (profile is not None) != uuid.startswith("MIG-"):
            raise InventoryError(f"static device {uuid}: MIG-… UUIDs need a mig_profile, GPU-… UUIDs must not have one")
        if profile is not None and not is_mig_profile_name(str(profile)):
            raise InventoryError(f"static device {uuid}: {profile!r} is not a MIG profile name such as 1g.10gb")
        try:
            memory = int(entry.get("memory_mib", 0))
        except (TypeError, ValueError):
            raise InventoryError(f"static device {uuid}: memory_mib must be a whole number") from None
        seen.add(uuid)
        if uuid in excluded or entry.get("parent") in excluded:
            continue
        devices.append(Device(uuid, str(entry.get("model", "")), memory, profile, entry.get("parent"), index=i))
    profiles = frozenset(d.mig_profile for d in devices if d.mig_profile)
    return Inventory(tuple(devices), "static", "" if devices else "no static devices configured", profiles)


def discover(nvml: ModuleType | None = None, exclude: Iterable[str] = ()) -> Inventory:
    """Every GPU by UUID; for a GPU in MIG mode its MIG devices instead of the GPU itself."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return Inventory((), "none", "nvidia-ml-py is not installed; serving CPU profiles only")
    excluded = set(exclude)
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        return Inventory((), "none", f"NVML unavailable ({_nvml_reason(e)}); serving CPU profiles only")
    try:
        devices: list[Device] = []
        profiles: set[str] = set()
        skipped: list[str] = []
        for i in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                if uuid in excluded:
                    continue
                model = _text(nvml.nvmlDeviceGetName(handle))
                memory = nvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20
                profiles |= _gpu_instance_profiles(nvml, handle)
                if _mig_enabled(nvml, handle):
                    devices.extend(_mig_devices(nvml, handle, uuid, model, excluded))
                else:
                    devices.append(Device(uuid, model, memory, None, None, index=i))
            except nvml.NVMLError as e:  # e.g. a GPU that fell off the bus: never hand it out
                skipped.append(f"GPU {i} skipped ({_nvml_reason(e)})")
        note = "; ".join(skipped)
        if not devices:
            note = "; ".join(filter(None, [note, "NVML found no allocatable GPUs; serving CPU profiles only"]))
        return Inventory(tuple(devices), "nvml", note, frozenset(profiles))
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def _mig_enabled(nvml, handle) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError_NotSupported:
        return False
    return current == nvml.NVML_DEVICE_MIG_ENABLE


def _mig_devices(nvml, handle, parent: str, model: str, excluded: set[str]) -> list[Device]:
    found = []
    for j in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except nvml.NVMLError_NotFound:
            continue
        uuid = _text(nvml.nvmlDeviceGetUUID(mig))
        if uuid in excluded:
            continue
        memory = nvml.nvmlDeviceGetMemoryInfo(mig).total // 2**20
        found.append(Device(uuid, model, memory, _mig_profile(nvml, mig, memory), parent, index=j))
    return found


def _mig_profile(nvml, mig, memory_mib: int) -> str:
    match = _MIG_NAME.search(_text(nvml.nvmlDeviceGetName(mig)))
    if match:
        return match.group(1).lower()
    # Older drivers name MIG devices like their parent: derive "<slices>g.<GB>gb".
    slices = nvml.nvmlDeviceGetAttributes(mig).gpuInstanceSliceCount
    return f"{slices}g.{round(memory_mib / 1024)}gb"


def _gpu_instance_profiles(nvml, handle) -> set[str]:
    """MIG profile names this GPU supports (listed by NVML even while MIG is off)."""
    names = set()
    for const in dir(nvml):
        if not re.match(r"^NVML_GPU_INSTANCE_PROFILE_\d+_SLICE\w*$", const) or const.endswith("_COUNT"):
            continue
        try:
            info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, getattr(nvml, const))
        except nvml.NVMLError:
            continue  # not supported by this GPU
        match = _MIG_NAME.search(_text(getattr(info, "name", b"")))
        if match:
            names.add(match.group(1).lower())
        elif info.sliceCount and info.memorySizeMB:
            names.add(f"{info.sliceCount}g.{round(info.memorySizeMB / 1024)}gb")
    return names


def _nvml_reason(error) -> str:
    return str(error) or type(error).__name__


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
