import json

import pytest

from spawner import gpu_config, profiles, quota
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


# Found by fuzzing (test_gpu_config_fuzz.py): each of these stopped the hub with a traceback or with
# a message of several lines or thousands of characters, or loaded but broke the first spawn.


def one_line_error(path):
    with pytest.raises(GPUConfigError) as e:
        gpu_config.load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and message.isprintable() and len(message) <= gpu_config.MAX_MESSAGE
    return message


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\x80{}", "not UTF-8 text (byte 0)"),
        (b"\xff\xfe{\x00}\x00", "not UTF-8 text (byte 0)"),  # UTF-16
        (b"[" * 100_000, "not valid JSON (nested too deeply)"),
        (b"1" * 5000, ""),  # more digits than Python reads into an int (3.11: not valid JSON)
    ],
)
def test_a_file_python_cannot_decode_gives_one_line(tmp_path, content, words):
    path = tmp_path / "gpus.json"
    path.write_bytes(content)
    assert words in one_line_error(str(path))


CPU = {"slug": "cpu", "display_name": "CPU"}


@pytest.mark.parametrize(
    "data, words",
    [
        ({**GOOD, "a\nb": 1}, r"unknown keys: a\nb (allowed"),
        ({**GOOD, "\x1e": 1}, r"unknown keys: \x1e (allowed"),
        ({**GOOD, "x" * 5000: 1}, "unknown keys: xxxxxxxxxx"),
        ({**GOOD, "profiles": [{**CPU, "slug": "x" * 5000}]}, "profile #1: slug 'xxxxxxxxxx"),
        ({**GOOD, "exclude": ["GPU-x\ny"]}, r"exclude entry GPU-x\ny matches no static device"),
        ({**GOOD, "quota": {"default": {"profiles": ["x\ny"]}}}, r"names unknown profile(s): x\ny"),
        ({**GOOD, "profiles": [{**CPU, "cpu_limit": 10**400}]}, "profile 'cpu': cpu_limit must be a positive number"),
        ({**GOOD, "profiles": [{**CPU, "cpu_limit": float("nan")}]}, "profile 'cpu': cpu_limit must be a positive"),
        ({**GOOD, "profiles": [{**CPU, "cpu_limit": float("inf")}]}, "profile 'cpu': cpu_limit must be a positive"),
        ({**GOOD, "profiles": [{**CPU, "cpu_limit": 1e308}]}, "profile 'cpu': cpu_limit must be a positive"),
        ({**GOOD, "profiles": [{**CPU, "mem_limit": "9" * 400 + "G"}]}, "profile 'cpu': mem_limit '9999"),
        ({**GOOD, "profiles": [{**CPU, "mem_limit": 16}]}, "profile 'cpu': mem_limit '16' needs a unit"),
        ({**GOOD, "profiles": [{**CPU, "mem_limit": "0"}]}, "profile 'cpu': mem_limit '0' needs a unit"),
        ({**GOOD, "profiles": [{**CPU, "gpu": {"model": {"name": "A100"}}}]}, "profile 'cpu': gpu model must be"),
        ({**GOOD, "profiles": [{**CPU, "slug": "cpu\n"}]}, r"profile #1: slug 'cpu\n' must be"),
        ({**GOOD, "gpus": [{"uuid": "GPU-a", "memory_mib": float("inf")}]}, "GPU-a: memory_mib must be a whole number"),
        ({**GOOD, "gpus": ["GPU-a\n"]}, r"static device #1: uuid 'GPU-a\n' is not a GPU-… or MIG-… UUID"),
        (
            {**GOOD, "gpus": [{"uuid": "MIG-b", "mig_profile": "1g.10gb\n", "parent": "GPU-c"}]},
            r"static device MIG-b: '1g.10gb\n' is not a MIG profile name",
        ),
        (
            {**GOOD, "gpus": [{"uuid": "MIG-b", "mig_profile": "1g.10gb", "parent": "GPU-c\n"}]},
            r"static device MIG-b: parent 'GPU-c\n' is not a GPU-… UUID",
        ),
    ],
)
def test_odd_keys_and_values_are_named_on_one_short_line(tmp_path, data, words):
    assert words in one_line_error(write(tmp_path, data))


def test_a_memory_limit_is_kept_as_docker_spawner_reads_it(tmp_path):
    from jupyterhub.traitlets import ByteSpecification

    data = {**GOOD, "profiles": [{**CPU, "mem_limit": " 16g "}, GOOD["profiles"][1]]}
    parsed = profiles.parse(gpu_config.load(write(tmp_path, data))["profiles"])
    assert parsed[0].mem_limit == "16G" and ByteSpecification().validate(None, "16G") == 16 * 2**30


def test_a_budget_of_minus_zero_hours_is_written_back_as_it_is_read(tmp_path):
    data = {**GOOD, "quota": {"default": {"gpu_hours_per_user": {"hours": -0.0, "period": "week"}}}}
    default = gpu_config.load(write(tmp_path, data))["default"]
    assert quota.written(quota.parse(default, "default")) == {"gpu_hours_per_user": "0/week"}


def test_a_disabled_profile_is_told_on_one_line(tmp_path):
    data = {**GOOD, "profiles": GOOD["profiles"] + [{"slug": "x", "display_name": "X", "gpu": {"model": "A\nB"}}]}
    assert gpu_config.load(write(tmp_path, data))["disabled"] == [
        r"profile 'x' asks for A\nB but this host has 0 such device(s): disabled until it can"
    ]
