"""NVML on a real NVIDIA GPU. Skipped where there is none; run on the device machine:
`python -m pytest tests/gpu -s` prints what it found."""

import pytest

from spawner import inventory

pynvml = pytest.importorskip("pynvml")


def _has_gpu() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _has_gpu(), reason="no NVIDIA GPU with a loaded driver"),
]


def test_real_gpus_are_found_by_uuid_with_their_mig_profiles():
    found = inventory.discover()
    print(f"\nsource={found.source} note={found.note!r}")
    for d in found.devices:
        print(f"  {d.uuid} model={d.model!r} memory={d.memory_mib} MiB", end=" ")
        print(f"mig_profile={d.mig_profile} parent={d.parent}")
    print(f"  supported MIG profiles: {sorted(found.mig_profiles)}")
    assert found.source == "nvml" and found.devices
    for d in found.devices:
        assert d.uuid.startswith(("GPU-", "MIG-")) and d.memory_mib > 0 and d.model
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        try:
            current, _ = pynvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError_NotSupported:
            current = None
    finally:
        pynvml.nvmlShutdown()
    if current == pynvml.NVML_DEVICE_MIG_DISABLE:
        assert any(d.uuid.startswith("GPU-") for d in found.devices)
    if "H100" in found.devices[0].model:
        assert {"1g.10gb", "7g.80gb"} <= found.mig_profiles
