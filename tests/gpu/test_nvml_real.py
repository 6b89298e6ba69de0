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


def test_real_gpus_sort_in_nvml_index_order_and_multi_gpu_grants_take_neighbours():
    from spawner.allocator import Ledger
    from spawner.devices import Request

    found = inventory.discover()
    whole = [d for d in found.devices if not d.is_mig]
    pynvml.nvmlInit()
    try:
        by_index = [
            inventory.canonical_uuid(_text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))))
            for i in range(pynvml.nvmlDeviceGetCount())
        ]
    finally:
        pynvml.nvmlShutdown()
    print(f"\nNVML index order: {by_index}")
    assert [d.uuid for d in sorted(whole, key=lambda d: d.order)] == [
        u for u in by_index if u in {d.uuid for d in whole}
    ]
    assert all(d.uuid == inventory.canonical_uuid(d.uuid) for d in found.devices)
    if len(whole) >= 2:
        lease = Ledger(found.devices).request("u/", Request(2))
        print(f"a 2-GPU lease on this host: {lease.devices}")
        assert list(lease.devices) == by_index[:2]


def test_discovery_is_quick_enough_to_repeat_every_minute():
    import time

    t0 = time.perf_counter()
    runs = 5
    for _ in range(runs):
        found = inventory.discover()
    per_run = (time.perf_counter() - t0) / runs
    print(
        f"\nNVML discovery of {len(found.devices)} device(s): {per_run * 1e3:.1f} ms per run;"
        f" unhealthy={dict(found.unhealthy)}"
    )
    assert not found.unhealthy
    assert per_run < 5


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)
