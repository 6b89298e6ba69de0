import pytest

from spawner import mig


@pytest.mark.parametrize("name", ["1g.10gb", "3g.40gb", "7g.141gb", "1g.10gb+me", "1g.24gb-me", "1g.23gb+me.all"])
def test_profile_names_are_slices_and_memory_with_an_optional_media_suffix(name):
    assert mig.is_profile_name(name)


@pytest.mark.parametrize(
    "name", ["", "big", "1g", "1g.10", "1G.10GB", "1g.10gb+x", "1g.10gb+", " 1g.10gb", "1c.3g.20gb"]
)
def test_other_text_is_not_a_profile_name(name):
    assert not mig.is_profile_name(name)


def test_every_known_profile_is_a_profile_name():
    assert mig.KNOWN_PROFILES and all(mig.is_profile_name(p) for p in mig.KNOWN_PROFILES)


@pytest.mark.parametrize(
    "nvml_name, profile",
    [
        ("NVIDIA A100-SXM4-80GB MIG 1g.10gb", "1g.10gb"),
        ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "3g.40gb"),
        ("MIG 1g.10gb+me", "1g.10gb+me"),
        ("MIG 1g.23gb+me.all", "1g.23gb+me.all"),
        ("NVIDIA H100 mig 2G.20GB", "2g.20gb"),
    ],
)
def test_nvml_names_give_the_profile_in_lower_case(nvml_name, profile):
    assert mig.from_nvml_name(nvml_name) == profile


def test_an_unknown_suffix_is_kept_so_the_slice_is_never_taken_for_a_plain_one():
    profile = mig.from_nvml_name("NVIDIA B200 MIG 1g.23gb+new")
    assert profile == "1g.23gb+new" and not mig.is_profile_name(profile)


@pytest.mark.parametrize("nvml_name", ["NVIDIA A100-SXM4-40GB", "Tesla T4", ""])
def test_names_without_a_mig_part_give_none(nvml_name):
    assert mig.from_nvml_name(nvml_name) is None


@pytest.mark.parametrize(
    "slices, memory_mib, profile", [(1, 4864, "1g.5gb"), (1, 9856, "1g.10gb"), (7, 81920, "7g.80gb")]
)
def test_a_profile_is_derived_from_slices_and_memory_when_nvml_names_none(slices, memory_mib, profile):
    assert mig.from_geometry(slices, memory_mib) == profile
