import pytest
from pynvml import NVMLError

from spawner import inventory
from spawner.inventory import InventoryError, canonical_uuid
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
        (["GPU-a", "gpu-A"], "GPU-a is listed twice"),
        ([{"uuid": "MIG-a", "mig_profile": "1g.10gb", "parent": "MIG-b"}], "parent 'MIG-b' is not a GPU-… UUID"),
        ([{"uuid": "MIG-a", "mig_profile": "1g.10gb", "parent": "gpu0"}], "parent 'gpu0' is not a GPU-… UUID"),
    ],
)
def test_malformed_static_devices_are_named(entries, words):
    with pytest.raises(InventoryError, match=words):
        inventory.from_static(entries)


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("GPU-5c4f3b3e-AB12", "GPU-5c4f3b3e-ab12"),
        ("gpu-5C4F", "GPU-5c4f"),
        ("mig-AbC-1", "MIG-abc-1"),
        ("MIG-gpu-E91E/1/0", "MIG-GPU-e91e/1/0"),
        ("GPU-5c4f", "GPU-5c4f"),
        ("gpu0", "gpu0"),
    ],
)
def test_uuids_have_one_spelling_with_the_prefix_as_nvidia_prints_it(text, canonical):
    assert canonical_uuid(text) == canonical


def test_static_uuids_and_parents_are_read_in_any_case_and_carried_canonical():
    found = inventory.from_static(
        ["gpu-ABC", {"uuid": "Mig-DEF", "mig_profile": "1g.10gb", "parent": "gPu-XyZ"}], exclude=[]
    )
    assert [(d.uuid, d.parent) for d in found.devices] == [("GPU-abc", None), ("MIG-def", "GPU-xyz")]


def test_static_exclude_matches_devices_and_parents_in_any_case():
    entries = ["GPU-abc", "GPU-keep", {"uuid": "MIG-s", "mig_profile": "1g.10gb", "parent": "GPU-p"}]
    found = inventory.from_static(entries, exclude=["gpu-ABC", "GPU-P"])
    assert [d.uuid for d in found.devices] == ["GPU-keep"]


def test_nvml_uuids_exclude_and_parents_compare_in_any_case():
    layout = {
        "gpus": [
            {**gpu(0), "uuid": "GPU-AAAA"},
            {**gpu(1, mig=[slice_("MIG-BBBB", "1g.10gb", 9856), slice_("MIG-CCCC", "1g.10gb", 9856)]), "uuid": "GPU-P"},
        ]
    }
    found = inventory.discover(fake_pynvml.make(layout), exclude=["gpu-aaaa", "mig-bbbb"])
    assert [(d.uuid, d.parent) for d in found.devices] == [("MIG-cccc", "GPU-p")]
    assert found.note == ""


@pytest.mark.parametrize(
    "entries",
    [
        ["GPU-p", {"uuid": "MIG-s", "mig_profile": "1g.10gb", "parent": "GPU-p"}],
        [{"uuid": "MIG-s", "mig_profile": "1g.10gb", "parent": "gpu-P"}, "GPU-p"],
    ],
)
def test_a_gpu_listed_whole_and_as_a_parent_of_slices_is_refused_in_one_line(entries):
    with pytest.raises(InventoryError) as e:
        inventory.from_static(entries)
    assert str(e.value) == "GPU-p is listed whole and as the parent of MIG-s: list either the GPU or its slices"


def test_a_static_exclude_entry_that_matches_nothing_is_refused_naming_it():
    with pytest.raises(InventoryError) as e:
        inventory.from_static(["GPU-a", {"uuid": "MIG-s", "mig_profile": "1g.10gb", "parent": "GPU-p"}], ["GPU-typo"])
    assert "exclude entry GPU-typo matches no static device" in str(e.value) and "\n" not in str(e.value)


def test_an_nvml_exclude_entry_that_matches_nothing_is_only_noted():
    found = inventory.discover(fake_pynvml.make({"gpus": [gpu(0)]}), exclude=["GPU-gone"])
    assert [d.uuid for d in found.devices] == ["GPU-0"]
    assert "exclude entry GPU-gone matches no device NVML reported" in found.note


def test_an_excluded_gpu_removed_between_two_discoveries_keeps_the_hub_starting():
    layout = {"gpus": [gpu(0), gpu(1)]}
    nvml = fake_pynvml.make(layout)
    first = inventory.discover(nvml, exclude=["GPU-1"])
    assert [d.uuid for d in first.devices] == ["GPU-0"] and first.note == ""
    del layout["gpus"][1]
    second = inventory.discover(nvml, exclude=["GPU-1"])
    assert [d.uuid for d in second.devices] == ["GPU-0"] and "GPU-1" in second.note


def test_a_gpu_that_disappears_between_two_discoveries_is_gone_not_unhealthy():
    layout = {"gpus": [gpu(0), gpu(1)]}
    nvml = fake_pynvml.make(layout)
    assert [d.uuid for d in inventory.discover(nvml).devices] == ["GPU-0", "GPU-1"]
    del layout["gpus"][0]
    second = inventory.discover(nvml)
    assert [(d.uuid, d.index) for d in second.devices] == [("GPU-1", 0)]
    assert second.unhealthy == {} and second.note == ""


def test_static_whole_gpus_are_numbered_in_listed_order_and_slices_by_their_gpu():
    def mig(uuid, parent):
        return {"uuid": uuid, "mig_profile": "1g.10gb", "parent": parent}

    entries = ["GPU-b", mig("MIG-2", "GPU-q"), "GPU-a", mig("MIG-1", "GPU-p"), mig("MIG-3", "GPU-q")]
    found = inventory.from_static(entries)
    numbers = {d.uuid: (d.index, d.parent_index) for d in found.devices}
    assert numbers["GPU-b"][0] == 0 and numbers["GPU-a"][0] == 1
    assert numbers["MIG-2"] == (0, 2) and numbers["MIG-3"] == (1, 2) and numbers["MIG-1"] == (0, 3)
    ordered = [d.uuid for d in sorted(found.devices, key=lambda d: d.order)]
    assert ordered == ["GPU-b", "GPU-a", "MIG-2", "MIG-3", "MIG-1"]


def test_excluded_static_entries_keep_their_numbers_like_nvml_indices():
    entries = ["GPU-a", {"uuid": "MIG-s", "mig_profile": "1g.10gb", "parent": "GPU-p"}, "GPU-b", "GPU-c"]
    found = inventory.from_static(entries, exclude=["GPU-b"])
    numbers = [(d.uuid, d.index, d.parent_index) for d in found.devices]
    assert numbers == [("GPU-a", 0, 0), ("MIG-s", 0, 3), ("GPU-c", 2, 0)]


def test_sorting_by_order_follows_nvml_indices_not_uuids():
    layout = {
        "gpus": [
            {
                **gpu(0, mig=[slice_("MIG-ff-1", "1g.10gb", 9856), slice_("MIG-ff-0", "1g.10gb", 9856)]),
                "uuid": "GPU-ff",
            },
            {**gpu(1, mig=[slice_("MIG-00-0", "1g.10gb", 9856)]), "uuid": "GPU-00"},
            {**gpu(2), "uuid": "GPU-80"},
            {**gpu(3, mig=[None, slice_("MIG-11-1", "1g.10gb", 9856)]), "uuid": "GPU-11"},
        ]
    }
    found = inventory.discover(fake_pynvml.make(layout))
    numbers = {d.uuid: (d.parent_index, d.index) for d in found.devices if d.is_mig}
    assert numbers == {"MIG-ff-1": (0, 0), "MIG-ff-0": (0, 1), "MIG-00-0": (1, 0), "MIG-11-1": (3, 1)}
    ordered = [d.uuid for d in sorted(found.devices, key=lambda d: d.order)]
    assert ordered == ["MIG-ff-1", "MIG-ff-0", "MIG-00-0", "GPU-80", "MIG-11-1"]


def test_a_gpu_failing_after_its_uuid_is_read_is_reported_unhealthy_not_offered():
    lost = {**gpu(1), "fail": {"nvmlDeviceGetMemoryInfo": "GpuIsLost"}}
    found = inventory.discover(fake_pynvml.make({"gpus": [gpu(0), lost]}))
    assert [d.uuid for d in found.devices] == ["GPU-0"]
    assert found.unhealthy == {"GPU-1": "GPU is lost"}
    assert "GPU 1 (GPU-1) skipped (GPU is lost)" in found.note


def test_a_mig_slice_failing_after_its_uuid_is_read_is_unhealthy_and_its_siblings_still_offered():
    broken = {**slice_("MIG-b", "1g.10gb", 9856), "fail": {"nvmlDeviceGetMemoryInfo": "Unknown"}}
    layout = {"gpus": [{**gpu(0, mig=[slice_("MIG-a", "1g.10gb", 9856), broken]), "uuid": "GPU-p"}]}
    found = inventory.discover(fake_pynvml.make(layout))
    assert [d.uuid for d in found.devices] == ["MIG-a"]
    assert found.unhealthy == {"MIG-b": "Unknown Error"}


def test_a_gpu_whose_uuid_cannot_be_read_is_only_noted():
    unnamed = {**gpu(2), "fail": {"nvmlDeviceGetUUID": "GpuIsLost"}}
    found = inventory.discover(fake_pynvml.make({"gpus": [gpu(0), gpu(1), unnamed]}))
    assert [d.uuid for d in found.devices] == ["GPU-0", "GPU-1"]
    assert found.unhealthy == {} and found.note == "GPU 2 skipped (GPU is lost)"


def test_the_unhealthy_map_of_an_inventory_cannot_be_changed():
    found = inventory.discover(fake_pynvml.make({"gpus": [{**gpu(0), "fail": {"nvmlDeviceGetName": "GpuIsLost"}}]}))
    assert dict(found.unhealthy) == {"GPU-0": "GPU is lost"}
    with pytest.raises(TypeError):
        found.unhealthy["GPU-0"] = "fine"  # type: ignore[index]
