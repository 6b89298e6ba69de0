import pytest
from pynvml import NVMLError

from spawner import inventory
from spawner.inventory import InventoryError
from tests.hardware import fake_pynvml

H100_PROFILES = [
    ("1g.10gb", 1, 9856),
    ("2g.20gb", 2, 20096),
    ("3g.40gb", 3, 40320),
    ("4g.40gb", 4, 40320),
    ("7g.80gb", 7, 80896),
]


def gpu(i, mig="disabled", name="NVIDIA H100 80GB HBM3", profiles=H100_PROFILES):
    return {"uuid": f"GPU-{i}", "name": name, "memory_mib": 81559, "mig": mig, "profiles": profiles}


def slice_(uuid, profile, memory):
    return {"uuid": uuid, "name": f"NVIDIA H100 80GB HBM3 MIG {profile}", "memory_mib": memory}


def test_whole_gpus_are_listed_by_uuid_with_model_and_memory():
    found = inventory.discover(fake_pynvml.make({"gpus": [gpu(0), gpu(1)]}))
    assert [d.uuid for d in found.devices] == ["GPU-0", "GPU-1"]
    assert found.devices[0].model == "NVIDIA H100 80GB HBM3" and found.devices[0].memory_mib == 81559
    assert not found.devices[0].is_mig and found.source == "nvml" and found.note == ""


def test_a_mig_gpu_offers_its_slices_and_not_itself():
    mixed = [
        slice_("MIG-a", "3g.40gb", 40320),
        None,
        slice_("MIG-b", "1g.10gb", 9856),
        slice_("MIG-c", "1g.10gb", 9856),
    ]
    found = inventory.discover(fake_pynvml.make({"gpus": [gpu(0, mig=mixed), gpu(1)]}))
    kinds = {d.uuid: (d.mig_profile, d.parent) for d in found.devices}
    assert kinds == {
        "MIG-a": ("3g.40gb", "GPU-0"),
        "MIG-b": ("1g.10gb", "GPU-0"),
        "MIG-c": ("1g.10gb", "GPU-0"),
        "GPU-1": (None, None),
    }


def test_mig_slices_named_like_their_parent_get_the_profile_from_slices_and_memory():
    old = {"uuid": "MIG-x", "name": "NVIDIA A100-SXM4-40GB", "memory_mib": 4864, "slices": 1}
    found = inventory.discover(fake_pynvml.make({"gpus": [gpu(0, mig=[old], name="NVIDIA A100-SXM4-40GB")]}))
    assert found.devices[0].mig_profile == "1g.5gb"


def test_gpus_without_mig_support_are_whole_gpus():
    found = inventory.discover(fake_pynvml.make({"gpus": [gpu(0, mig="NotSupported", name="Tesla T4", profiles=[])]}))
    assert [(d.uuid, d.is_mig) for d in found.devices] == [("GPU-0", False)]
    assert found.mig_profiles == frozenset()


def test_supported_mig_profiles_are_read_even_with_mig_off():
    found = inventory.discover(fake_pynvml.make({"gpus": [gpu(0)]}))
    assert {"1g.10gb", "3g.40gb", "7g.80gb"} <= found.mig_profiles


def test_excluded_gpus_and_their_slices_are_never_offered():
    layout = {"gpus": [gpu(0), gpu(1, mig=[slice_("MIG-z", "1g.10gb", 9856)]), gpu(2)]}
    found = inventory.discover(fake_pynvml.make(layout), exclude=["GPU-0", "MIG-z"])
    assert [d.uuid for d in found.devices] == ["GPU-2"]


@pytest.mark.parametrize("error", ["LibraryNotFound", "DriverNotLoaded", "NoPermission"])
def test_without_nvml_the_hub_still_serves_cpu_profiles(error):
    found = inventory.discover(fake_pynvml.make({"init_error": error}))
    assert found.devices == () and found.source == "none"
    assert "NVML unavailable" in found.note and "CPU profiles only" in found.note


def test_no_gpus_is_said_clearly():
    found = inventory.discover(fake_pynvml.make({"gpus": []}))
    assert found.devices == () and "no allocatable GPUs" in found.note


def test_the_fake_raises_the_real_error_classes():
    fake = fake_pynvml.make({"gpus": [gpu(0, mig="NotSupported")]})
    fake.nvmlInit()
    with pytest.raises(NVMLError) as e:
        fake.nvmlDeviceGetMigMode(fake.nvmlDeviceGetHandleByIndex(0))
    import pynvml

    assert isinstance(e.value, pynvml.NVMLError_NotSupported)


def test_static_inventory_accepts_uuids_and_described_devices():
    found = inventory.from_static(
        ["GPU-aaa", {"uuid": "MIG-bbb", "mig_profile": "1g.10gb", "parent": "GPU-ccc", "model": "H100"}]
    )
    assert [(d.uuid, d.mig_profile) for d in found.devices] == [("GPU-aaa", None), ("MIG-bbb", "1g.10gb")]
    assert found.mig_profiles == {"1g.10gb"}


@pytest.mark.parametrize(
    "entries, words",
    [
        (["gpu0"], "is not a GPU-"),
        (["GPU-a", "GPU-a"], "listed twice"),
        ([{"uuid": "MIG-a"}], "need a mig_profile"),
        ([{"uuid": "GPU-a", "mig_profile": "1g.10gb"}], "must not have one"),
        ([{"uuid": "MIG-a", "mig_profile": "big"}], "not a MIG profile name"),
        ([{"uuid": "GPU-a", "colour": "green"}], "unknown keys: colour"),
        ([{"uuid": "GPU-a", "memory_mib": "lots"}], "memory_mib"),
        ([42], "UUID string or a mapping"),
    ],
)
def test_malformed_static_devices_are_named(entries, words):
    with pytest.raises(InventoryError, match=words):
        inventory.from_static(entries)
