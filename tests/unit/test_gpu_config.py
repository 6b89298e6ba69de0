import json

import pytest

from spawner import gpu_config
from spawner.gpu_config import GPUConfigError
from spawner.inventory import Inventory

GOOD = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU", "default": True},
        {"slug": "mig", "display_name": "MIG", "gpu": {"count": 1, "mig_profile": "1g.10gb"}},
    ],
    "gpus": ["GPU-a", {"uuid": "MIG-b", "mig_profile": "1g.10gb", "parent": "GPU-c"}],
    "quota": {"default": {"profiles": ["cpu"]}, "groups": {"students": {"profiles": ["cpu", "mig"]}}},
}


def write(tmp_path, data):
    path = tmp_path / "gpus.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_a_good_file_gives_the_trait_values(tmp_path):
    values = gpu_config.load(write(tmp_path, GOOD))
    assert values["profiles"] == GOOD["profiles"] and values["groups"] == GOOD["quota"]["groups"]
    assert [d.uuid for d in values["inventory"].devices] == ["GPU-a", "MIG-b"]


def test_no_file_means_cpu_only():
    assert gpu_config.load("")["profiles"] == []


def test_without_static_gpus_nvml_is_asked(tmp_path):
    asked = []

    def discover(exclude=()):
        asked.append(list(exclude))
        return Inventory((), "none", "no NVML")

    data = {"profiles": [{"slug": "cpu", "display_name": "CPU"}], "exclude": ["GPU-x"]}
    gpu_config.load(write(tmp_path, data), discover=discover)
    assert asked == [["GPU-x"]]


@pytest.mark.parametrize(
    "data, words",
    [
        ("{not json", "not valid JSON"),
        ([], "must hold a JSON object"),
        ({**GOOD, "profile": []}, "unknown keys: profile"),
        ({**GOOD, "gpus": ["GPU-a", "GPU-a"]}, "listed twice"),
        ({**GOOD, "quota": {"groups": {"students": {"profiles": ["gpu"]}}}}, "unknown profile(s): gpu"),
        ({**GOOD, "quota": {"default": {"priority": "high"}}}, "priority"),
        ({**GOOD, "exclude": "GPU-a"}, "exclude must be a list"),
    ],
)
def test_problems_stop_the_hub_with_one_line_naming_the_file(tmp_path, data, words):
    path = write(tmp_path, data)
    with pytest.raises(GPUConfigError) as e:
        gpu_config.load(path)
    assert str(e.value).startswith(path) and words in str(e.value) and "\n" not in str(e.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(GPUConfigError, match="cannot read it"):
        gpu_config.load(str(tmp_path / "nope.json"))


def test_the_shipped_example_is_valid():
    import pathlib

    example = pathlib.Path(__file__).parents[2] / "config" / "gpus.example.json"
    gpus = {"gpus": ["GPU-0", "GPU-1", {"uuid": "MIG-0", "mig_profile": "1g.10gb", "parent": "GPU-2"}]}
    data = {**json.loads(example.read_text()), **gpus}
    assert gpu_config._validate(data, None)["profiles"]


def test_a_profile_the_host_cannot_serve_is_disabled_with_a_line_and_the_hub_starts(tmp_path):
    data = {**GOOD, "profiles": GOOD["profiles"] + [{"slug": "x", "display_name": "X", "gpu": {"count": 2}}]}
    loaded = gpu_config.load(write(tmp_path, data))
    assert loaded["disabled"] == [
        "profile 'x' asks for 2 x GPU but this host has 1 such device(s): disabled until it can"
    ]


# Limits and budgets


def test_limits_and_budgets_in_a_good_file_are_accepted(tmp_path):
    data = {
        **GOOD,
        "profiles": [
            {**GOOD["profiles"][0], "idle_timeout": "20m"},
            {**GOOD["profiles"][1], "gpu_idle_timeout": "30m", "gpu_idle_threshold": 5, "max_runtime": "8h"},
        ],
        "quota": {
            "default": {"gpu_hours_per_user": "20/week"},
            "groups": {"students": {"gpu_hours_per_group": "500/month"}},
        },
    }
    loaded = gpu_config.load(write(tmp_path, data), hub_idle_timeout=3600)
    assert loaded["profiles"] == data["profiles"] and loaded["default"] == {"gpu_hours_per_user": "20/week"}


@pytest.mark.parametrize(
    "data, words",
    [
        (
            {**GOOD, "profiles": [{"slug": "cpu", "display_name": "CPU", "gpu_idle_timeout": "30m"}]},
            "profile 'cpu': gpu_idle_timeout and gpu_idle_threshold need a gpu in the profile",
        ),
        (
            {**GOOD, "profiles": [{"slug": "cpu", "display_name": "CPU", "max_runtime": "a while"}]},
            "profile 'cpu': max_runtime must be a duration such as 30m or 2h",
        ),
        (
            {**GOOD, "profiles": [GOOD["profiles"][0], {**GOOD["profiles"][1], "gpu_idle_threshold": 150}]},
            "profile 'mig': gpu_idle_threshold must be a percentage",
        ),
        (
            {**GOOD, "profiles": [{"slug": "cpu", "display_name": "CPU", "idle_timeout": "2h"}]},
            "must be shorter than the hub-wide GPUHUB_IDLE_TIMEOUT (3600 s)",
        ),
        (
            {**GOOD, "quota": {"default": {"gpu_hours_per_user": "20/fortnight"}}},
            "quota of quota.default: gpu_hours_per_user: period must be one of day, week, month",
        ),
        (
            {**GOOD, "quota": {"groups": {"students": {"gpu_hours_per_group": "lots"}}}},
            "quota of group 'students': gpu_hours_per_group must be GPU-hours per period",
        ),
    ],
)
def test_a_bad_limit_or_budget_stops_the_hub_with_one_line_naming_the_file(tmp_path, data, words):
    path = write(tmp_path, data)
    with pytest.raises(GPUConfigError) as e:
        gpu_config.load(path, hub_idle_timeout=3600)
    assert str(e.value).startswith(f"{path}: ") and words in str(e.value) and "\n" not in str(e.value)
