import pytest

from spawner import profiles
from spawner.culling import Limits
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


# Limits: gpu_idle_timeout, gpu_idle_threshold, max_runtime, idle_timeout

GPU = {"slug": "a100", "display_name": "1 x A100", "gpu": {"count": 1, "model": "A100"}}


def test_profile_limits_parse_into_seconds_and_a_threshold():
    parsed = profiles.parse(
        [
            {**CPU, "max_runtime": "8h", "idle_timeout": "20m"},
            {**GPU, "gpu_idle_timeout": "30m", "gpu_idle_threshold": 10, "max_runtime": 5400},
            {**MIG, "gpu_idle_timeout": "90s"},
        ],
        HOST,
        hub_idle_timeout=3600,
    )
    assert parsed[0].limits == Limits(max_runtime=8 * 3600, idle_timeout=1200)
    assert parsed[1].limits == Limits(gpu_idle_timeout=1800, gpu_idle_threshold=10.0, max_runtime=5400)
    assert parsed[2].limits == Limits(gpu_idle_timeout=90, gpu_idle_threshold=5.0)  # the default threshold


def test_a_profile_without_limits_has_none():
    parsed = profiles.parse([CPU, MIG, {**GPU, "max_runtime": None}], HOST)
    assert all(p.limits == Limits() and not p.limits for p in parsed)


@pytest.mark.parametrize(
    "entry, words",
    [
        ({**GPU, "gpu_idle_timeout": "30 minutes"}, "gpu_idle_timeout must be a duration such as 30m or 2h"),
        ({**GPU, "max_runtime": "0h"}, "max_runtime must be longer than 0"),
        ({**CPU, "idle_timeout": -60}, "idle_timeout must be longer than 0"),
        ({**CPU, "max_runtime": True}, "max_runtime must be a duration"),
        ({**GPU, "gpu_idle_timeout": "30m", "gpu_idle_threshold": 0}, "gpu_idle_threshold must be a percentage"),
        ({**GPU, "gpu_idle_timeout": "30m", "gpu_idle_threshold": 101}, "above 0 and at most 100"),
        ({**GPU, "gpu_idle_threshold": -1}, "gpu_idle_threshold must be a percentage"),
        ({**GPU, "gpu_idle_threshold": "5"}, "gpu_idle_threshold must be a percentage"),
        ({**GPU, "gpu_idle_threshold": True}, "gpu_idle_threshold must be a percentage"),
        ({**CPU, "gpu_idle_timeout": "30m"}, "gpu_idle_timeout and gpu_idle_threshold need a gpu in the profile"),
        ({**CPU, "gpu_idle_threshold": 5}, "need a gpu in the profile"),
    ],
)
def test_a_bad_limit_is_named_in_one_line(entry, words):
    with pytest.raises(ProfileError) as e:
        profiles.parse([entry], HOST)
    message = str(e.value)
    assert message.startswith(f"profile {entry['slug']!r}: ") and words in message and "\n" not in message


def test_a_threshold_of_exactly_100_percent_is_allowed():
    parsed = profiles.parse([{**GPU, "gpu_idle_timeout": "1h", "gpu_idle_threshold": 100}], HOST)
    assert parsed[0].limits.gpu_idle_threshold == 100.0


@pytest.mark.parametrize("idle_timeout", ["1h", "2h", 3600])
def test_an_idle_timeout_not_shorter_than_the_hub_wide_one_is_refused(idle_timeout):
    with pytest.raises(ProfileError) as e:
        profiles.parse([{**CPU, "idle_timeout": idle_timeout}], HOST, hub_idle_timeout=3600)
    message = str(e.value)
    assert message.startswith("profile 'cpu': idle_timeout (") and "\n" not in message
    assert "must be shorter than the hub-wide GPUHUB_IDLE_TIMEOUT (3600 s)" in message


def test_an_idle_timeout_is_free_when_the_hub_culls_nothing_and_fine_when_shorter():
    assert profiles.parse([{**CPU, "idle_timeout": "8h"}], HOST)[0].limits.idle_timeout == 8 * 3600
    parsed = profiles.parse([{**CPU, "idle_timeout": "59m"}], HOST, hub_idle_timeout=3600)
    assert parsed[0].limits.idle_timeout == 59 * 60
