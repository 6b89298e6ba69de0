"""What devices this host can hand out: from NVML, or declared in config. No Docker.

NVML is blocking C calls; callers run `discover()` in a thread, never on the
hub's event loop. NVML missing, no driver, no GPUs: an empty inventory and a
clear note, so the hub still serves CPU profiles.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

from . import mig
from .devices import Device

# "MIG-GPU-<uuid>/<gi>/<ci>" is how drivers before R470 named MIG devices.
_UUID_PREFIX = re.compile(r"^(?:MIG-GPU-|GPU-|MIG-)", re.IGNORECASE)
_STATIC_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]+$")
_GPU_UUID = re.compile(r"^GPU-[0-9A-Za-z-]+$")


class InventoryError(ValueError):
    """Static device configuration is malformed (one line naming the entry)."""


@dataclass(frozen=True)
class Inventory:
    devices: tuple[Device, ...]
    source: str  # "nvml", "static" or "none"
    note: str = ""  # why there are no devices, what was skipped: for the hub log
    mig_profiles: frozenset[str] = frozenset()  # profiles the GPUs could be partitioned into
    # canonical UUID -> one-line reason, for devices NVML named but could not query: quarantine these.
    # A GPU listed here hides its MIG slices too (they were not enumerated).
    unhealthy: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def canonical_uuid(text: str) -> str:
    """One spelling per device UUID, as NVIDIA prints it: "GPU-"/"MIG-" upper-case, the rest lower-case.

    Compare UUIDs only in this form. Text that is not a GPU-/MIG- UUID comes back unchanged.
    """
    prefix = _UUID_PREFIX.match(text)
    if prefix is None:
        return text
    return prefix.group().upper() + text[prefix.end() :].lower()


def from_static(entries: Iterable[Mapping[str, Any] | str], exclude: Iterable[str] = ()) -> Inventory:
    """Devices declared in config: a UUID string, or a dict with uuid/model/memory_mib/mig_profile/parent.

    Indices mirror NVML's: whole GPUs are numbered in the order they are listed; the GPUs named as
    `parent` come after them, in order of first appearance; a slice's index is its position among
    its GPU's slices. Excluded entries keep their numbers, as an excluded GPU keeps its NVML index.
    """
    excluded = _as_written(exclude)
    listed: list[tuple[str, str, int, str | None, str | None]] = []  # uuid, model, memory, profile, parent
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"uuid": entry}
        if not isinstance(entry, Mapping):
            raise InventoryError(f"static device #{i + 1} must be a UUID string or a mapping, got {entry!r}")
        unknown = set(entry) - {"uuid", "model", "memory_mib", "mig_profile", "parent"}
        if unknown:
            raise InventoryError(f"static device #{i + 1} has unknown keys: {', '.join(sorted(unknown))}")
        written = str(entry.get("uuid", ""))
        uuid = canonical_uuid(written)
        profile = entry.get("mig_profile")
        if not _STATIC_UUID.fullmatch(uuid):
            raise InventoryError(f"static device #{i + 1}: uuid {written!r} is not a GPU-… or MIG-… UUID")
        if uuid in seen:
            raise InventoryError(f"static device {uuid} is listed twice")
        if (profile is not None) != uuid.startswith("MIG-"):
            raise InventoryError(f"static device {uuid}: MIG-… UUIDs need a mig_profile, GPU-… UUIDs must not have one")
        if profile is not None and not mig.is_profile_name(str(profile)):
            raise InventoryError(f"static device {uuid}: {profile!r} is not a MIG profile name such as 1g.10gb")
        parent = entry.get("parent")
        if parent is not None:
            parent = canonical_uuid(str(parent))
            if profile is not None and not _GPU_UUID.fullmatch(parent):
                raise InventoryError(f"static device {uuid}: parent {entry['parent']!r} is not a GPU-… UUID")
        try:
            memory = int(entry.get("memory_mib", 0))
        except (TypeError, ValueError, OverflowError):
            raise InventoryError(f"static device {uuid}: memory_mib must be a whole number") from None
        seen.add(uuid)
        listed.append((uuid, str(entry.get("model", "")), memory, profile, parent))

    whole = [uuid for uuid, _, _, profile, _ in listed if profile is None]
    for uuid, _, _, profile, parent in listed:
        if profile is not None and parent in whole:
            raise InventoryError(
                f"{parent} is listed whole and as the parent of {uuid}: list either the GPU or its slices"
            )
    named = seen | {parent for *_, parent in listed if parent}
    for uuid, written in excluded.items():
        if uuid not in named:
            raise InventoryError(f"exclude entry {written} matches no static device (neither a uuid nor a parent)")

    gpu_index: dict[str | None, int] = {uuid: n for n, uuid in enumerate(whole)}
    slices_of: dict[str | None, int] = {}
    devices: list[Device] = []
    for uuid, model, memory, profile, parent in listed:
        if profile is None:
            index, parent_index = gpu_index[uuid], 0
        else:
            # Slices without a parent are numbered as one GPU (key None).
            parent_index = gpu_index.setdefault(parent, len(gpu_index))
            index = slices_of[parent] = slices_of.get(parent, -1) + 1
        if uuid in excluded or parent in excluded:
            continue
        devices.append(Device(uuid, model, memory, profile, parent, index=index, parent_index=parent_index))
    profiles = frozenset(d.mig_profile for d in devices if d.mig_profile)
    return Inventory(tuple(devices), "static", "" if devices else "no static devices configured", profiles)


def discover(nvml: ModuleType | None = None, exclude: Iterable[str] = ()) -> Inventory:
    """Every GPU by UUID; for a GPU in MIG mode its MIG devices instead of the GPU itself.

    A device whose UUID NVML returns but which then fails another call is left out and named in
    `unhealthy`; one whose UUID cannot be read is only mentioned in `note`. So is an `exclude` entry
    that matches nothing NVML reported (a GPU removed since the config was written): not an error.
    """
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return Inventory((), "none", "nvidia-ml-py is not installed; serving CPU profiles only")
    excluded = _as_written(exclude)
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        return Inventory((), "none", f"NVML unavailable ({_nvml_reason(e)}); serving CPU profiles only")
    try:
        devices: list[Device] = []
        profiles: set[str] = set()
        skipped: list[str] = []
        unhealthy: dict[str, str] = {}
        reported: set[str] = set()  # every UUID NVML returned
        for i in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid = canonical_uuid(_text(nvml.nvmlDeviceGetUUID(handle)))
            except nvml.NVMLError as e:  # e.g. a GPU that fell off the bus: never hand it out
                skipped.append(f"GPU {i} skipped ({_nvml_reason(e)})")
                continue
            reported.add(uuid)
            if uuid in excluded:
                continue
            try:
                model = _text(nvml.nvmlDeviceGetName(handle))
                memory = nvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20
                supported = _gpu_instance_profiles(nvml, handle)
                if _mig_enabled(nvml, handle):
                    found = _mig_devices(nvml, handle, i, uuid, model, excluded, reported, unhealthy, skipped)
                else:
                    found = [Device(uuid, model, memory, None, None, index=i)]
            except nvml.NVMLError as e:
                unhealthy[uuid] = _nvml_reason(e)
                skipped.append(f"GPU {i} ({uuid}) skipped ({_nvml_reason(e)})")
                continue
            profiles |= supported
            devices.extend(found)
        for uuid, written in excluded.items():
            if uuid not in reported:
                skipped.append(f"exclude entry {written} matches no device NVML reported")
        note = "; ".join(skipped)
        if not devices:
            note = "; ".join(filter(None, [note, "NVML found no allocatable GPUs; serving CPU profiles only"]))
        return Inventory(tuple(devices), "nvml", note, frozenset(profiles), MappingProxyType(unhealthy))
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


def _mig_devices(
    nvml,
    handle,
    i: int,
    parent: str,
    model: str,
    excluded: Mapping[str, str],
    reported: set[str],
    unhealthy: dict[str, str],
    skipped: list[str],
) -> list[Device]:
    """The GPU's MIG devices; one that fails is left out (and named in `unhealthy` if its UUID was read)."""
    found = []
    for j in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            slice_handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except nvml.NVMLError_NotFound:
            continue  # an empty slot
        except nvml.NVMLError as e:
            skipped.append(f"MIG device {j} of GPU {i} skipped ({_nvml_reason(e)})")
            continue
        try:
            uuid = canonical_uuid(_text(nvml.nvmlDeviceGetUUID(slice_handle)))
        except nvml.NVMLError as e:
            skipped.append(f"MIG device {j} of GPU {i} skipped ({_nvml_reason(e)})")
            continue
        reported.add(uuid)
        if uuid in excluded:
            continue
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(slice_handle).total // 2**20
            profile = _mig_profile(nvml, slice_handle, memory)
        except nvml.NVMLError as e:
            unhealthy[uuid] = _nvml_reason(e)
            skipped.append(f"MIG device {j} of GPU {i} ({uuid}) skipped ({_nvml_reason(e)})")
            continue
        found.append(Device(uuid, model, memory, profile, parent, index=j, parent_index=i))
    return found


def _mig_profile(nvml, handle, memory_mib: int) -> str:
    named = mig.from_nvml_name(_text(nvml.nvmlDeviceGetName(handle)))
    if named:
        return named
    # Older drivers name MIG devices like their parent: derive the name from slices and memory.
    return mig.from_geometry(nvml.nvmlDeviceGetAttributes(handle).gpuInstanceSliceCount, memory_mib)


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
        named = mig.from_nvml_name(_text(getattr(info, "name", b"")))
        if named:
            names.add(named)
        elif info.sliceCount and info.memorySizeMB:
            names.add(mig.from_geometry(info.sliceCount, info.memorySizeMB))
    return names


def _as_written(uuids: Iterable[str]) -> dict[str, str]:
    """Canonical UUID -> the first spelling given, for messages that point into the config."""
    found: dict[str, str] = {}
    for text in uuids:
        found.setdefault(canonical_uuid(str(text)), str(text))
    return found


def _nvml_reason(error) -> str:
    return str(error) or type(error).__name__


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
