import pytest

from spawner import profiles
from spawner.devices import Device, Request
from spawner.inventory import Inventory
from spawner.profiles import ProfileError

HOST = Inventory(
    (
        Device("GPU-0", "A100"),
        Device("GPU-1", "A100"),
        Device("MIG-0", "H100", mig_profile="1g.10gb", parent="GPU-9"),
    ),
    "static",
)
CPU = {"slug": "cpu", "display_name": "CPU only"}
MIG = {
    "slug": "mig",
    "display_name": "MIG slice",
    "gpu": {"count": 1, "mig_profile": "1g.10gb"},
    "mem_limit": "16g",
}


def test_an_empty_list_offers_one_cpu_profile():
    assert profiles.parse([]) == [profiles.CPU_ONLY]


def test_profiles_parse_into_requests_and_limits():
    parsed = profiles.parse(
        [
            CPU,
            MIG,
            {
                "slug": "two",
                "display_name": "2 GPUs",
                "gpu": {"count": 2, "model": "A100"},
                "cpu_limit": 8,
                "image": "x/y:1",
            },
        ],
        HOST,
    )
    assert parsed[0].gpu is None
    assert parsed[1].gpu == Request(1, mig_profile="1g.10gb") and parsed[1].mem_limit == "16G"
    assert parsed[2].gpu == Request(2, model="A100") and parsed[2].cpu_limit == 8.0 and parsed[2].image == "x/y:1"


@pytest.mark.parametrize(
    "entry, words",
    [
        (
            {"slug": "x", "display_name": "X", "gpu": {"count": 1, "mig_profile": "9g.99gb"}},
            "unknown MIG profile",
        ),
        ({"slug": "x", "display_name": "X", "gpu": {"count": 0}}, "count must be a whole number >= 1"),
        ({"slug": "x", "display_name": "X", "gpu": {"count": 1, "colour": "red"}}, "unknown keys: colour"),
        ({"slug": "x", "display_name": "X", "gpu": {"mig_profile": "1g.10gb", "model": "A100"}}, "not both"),
        ({"slug": "Bad Slug", "display_name": "X"}, "slug 'Bad Slug'"),
        ({"slug": "x"}, "needs a display_name"),
        ({"slug": "x", "display_name": "X", "mem_limit": "lots"}, "mem_limit 'lots'"),
        ({"slug": "x", "display_name": "X", "cpu_limit": -2}, "cpu_limit"),
        ({"slug": "x", "display_name": "X", "kubespawner_override": {}}, "unknown keys"),
    ],
)
def test_a_bad_profile_is_named_in_one_line(entry, words):
    with pytest.raises(ProfileError) as e:
        profiles.parse([CPU, entry], HOST)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_duplicate_slugs_and_two_defaults_are_refused():
    with pytest.raises(ProfileError, match="'cpu' is defined twice"):
        profiles.parse([CPU, CPU])
    with pytest.raises(ProfileError, match="only one profile may be the default"):
        profiles.parse([{**CPU, "default": True}, {**MIG, "default": True}])


def test_a_profile_the_host_cannot_serve_is_kept_and_named_as_unservable_not_refused():
    parsed = profiles.parse([CPU, {"slug": "x", "display_name": "X", "gpu": {"count": 3}}], HOST)
    assert profiles.unservable(parsed[1], 2) == "profile 'x' asks for 3 x GPU but this host has 2 such device(s)"
    assert profiles.unservable(parsed[1], 3) == "" and profiles.unservable(parsed[0], 0) == ""


def test_without_gpus_gpu_profiles_are_kept_but_not_checked_against_the_host():
    parsed = profiles.parse(
        [CPU, {"slug": "big", "display_name": "8 GPUs", "gpu": {"count": 8}}], Inventory((), "none")
    )
    assert parsed[1].device_count == 8


def test_profiles_supported_by_the_host_are_known_even_if_not_in_the_table():
    host = Inventory((), "nvml", mig_profiles=frozenset({"1g.128gb"}))
    entry = {"slug": "x", "display_name": "X", "gpu": {"count": 1, "mig_profile": "1g.128gb"}}
    assert profiles.parse([entry], host)[0].gpu.mig_profile == "1g.128gb"


def test_choose_takes_the_default_or_the_asked_slug():
    parsed = profiles.parse([CPU, {**MIG, "default": True}], HOST)
    assert profiles.choose(parsed, None).slug == "mig"
    assert profiles.choose(parsed, "cpu").slug == "cpu"
    with pytest.raises(ProfileError, match="unknown profile 'gpu99'; choose one of: cpu, mig"):
        profiles.choose(parsed, "gpu99")
