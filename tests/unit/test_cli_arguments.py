"""The `gpuhub` command's arguments: USER[/SERVER], `quota set` key=value -> the PUT body,
and one-line usage errors. Pure, no hub."""

import subprocess
import sys

import pytest

from spawner import cli, cli_admin
from spawner.cli_admin import UNSET, apply_changes, describe_change, quota_changes, server_spec
from spawner.cli_client import CLIError


def test_user_and_server_are_told_apart():
    assert server_spec("ann") == ("ann", "")
    assert server_spec("ann@uni.edu/train-2") == ("ann@uni.edu", "train-2")


@pytest.mark.parametrize("text", ["", "Ann", "ann/", "ann/a/b", "ann/../x", "../etc", "ann/x y"])
def test_a_malformed_user_or_server_is_refused(text):
    with pytest.raises(CLIError, match="not a valid"):
        server_spec(text)


def test_quota_values_become_the_json_the_schema_reads():
    changes = quota_changes(
        [
            "profiles=cpu, mig",
            "max_devices_per_user=1",
            "max_devices_per_group=none",
            "priority=-5",
            "gpu_hours_per_user=20/week",
            "gpu_hours_per_group=",
        ]
    )
    assert changes == {
        "profiles": ["cpu", "mig"],
        "max_devices_per_user": 1,
        "max_devices_per_group": None,
        "priority": -5,
        "gpu_hours_per_user": "20/week",
        "gpu_hours_per_group": UNSET,
    }
    assert quota_changes(["profiles=*"]) == {"profiles": "*"}


def test_values_the_cli_cannot_read_go_to_the_hub_as_written_for_its_one_line_refusal():
    # The hub's quota.parse is the one schema: the CLI does not second-guess it.
    assert quota_changes(["max_devices_per_user=many", "colour=blue"]) == {
        "max_devices_per_user": "many",
        "colour": "blue",
    }


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "at least one key=value"),
        (["priority"], "'priority' is not key=value"),
        (["=5"], "is not key=value"),
        (["priority=1", "priority=2"], "priority is given twice"),
    ],
)
def test_malformed_assignments_are_refused(args, words):
    with pytest.raises(CLIError, match=words):
        quota_changes(args)


def test_set_changes_only_the_named_keys_and_an_empty_value_unsets():
    current = {"profiles": ["cpu"], "max_devices_per_user": 2, "priority": 3}
    changes = quota_changes(["max_devices_per_user=1", "priority=", "gpu_hours_per_user=20/week"])
    new = apply_changes(current, changes)
    assert new == {"profiles": ["cpu"], "max_devices_per_user": 1, "gpu_hours_per_user": "20/week"}
    assert current == {"profiles": ["cpu"], "max_devices_per_user": 2, "priority": 3}  # not mutated
    assert describe_change(current, new) == (
        "max_devices_per_user 2 -> 1; priority 3 -> -; gpu_hours_per_user - -> 20/week"
    )
    assert apply_changes({}, quota_changes(["priority="])) == {}


def test_commands_and_options_parse_in_either_order():
    a = cli.parser().parse_args(["--token", "t", "gpus", "--json"])
    assert a.func is cli_admin.cmd_gpus and a.json and a.token == "t"
    a = cli.parser().parse_args(["gpus", "lift", "MIG-x", "--url", "http://h"])
    assert a.func is cli_admin.cmd_lift and a.uuid == "MIG-x" and a.url == "http://h" and not a.json
    a = cli.parser().parse_args(["queue", "remove", "bob/x"])
    assert a.func is cli_admin.cmd_queue_remove and a.who == "bob/x"
    a = cli.parser().parse_args(["usage", "--since", "7d", "--by", "group", "--csv", "--user", "ann"])
    assert (a.since, a.until, a.by, a.csv, a.user) == ("7d", None, "group", True, "ann")
    a = cli.parser().parse_args(["quota", "set", "students", "priority=5"])
    assert a.func is cli_admin.cmd_quota_set and a.assignments == ["priority=5"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["usage", "--by", "colour"], "invalid choice: 'colour'"),
        (["quota"], "required"),
        (["frobnicate"], "invalid choice"),
        (["usage", "--csv", "--json"], "--csv or --json"),
        (["stop", "Not A User"], "not a valid user name"),
    ],
)
def test_usage_mistakes_are_one_line_and_non_zero(args, words):
    env = {"PATH": "/usr/bin:/bin", "GPUHUB_TOKEN": "x", "GPUHUB_URL": "http://127.0.0.1:1"}
    r = subprocess.run([sys.executable, "-m", "spawner.cli", *args], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and r.stdout == ""
    assert words in r.stderr and r.stderr.count("\n") == 1 and r.stderr.startswith("gpuhub: error: "), r.stderr


def test_without_a_token_or_a_hub_the_error_is_one_line():
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "spawner.cli", "gpus"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stderr == (
        "gpuhub: error: no API token: set GPUHUB_TOKEN or pass --token (create one at <hub>/hub/token)\n"
    )
    env = {**env, "GPUHUB_TOKEN": "x", "GPUHUB_URL": "http://127.0.0.1:1"}
    r = subprocess.run([sys.executable, "-m", "spawner.cli", "queue"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stderr.startswith("gpuhub: error: cannot reach the hub at http://127.0.0.1:1")
    assert r.stderr.count("\n") == 1
