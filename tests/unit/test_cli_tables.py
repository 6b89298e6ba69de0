"""What the `gpuhub` command prints for the hub's JSON (docs/api.md shapes): pure, no hub."""

import csv
import io
import re
from datetime import datetime, timedelta, timezone

from spawner import cli_admin
from spawner.cli_table import duration, table

NOW = datetime(2026, 11, 27, 11, 5, 11, tzinfo=timezone.utc)
GIB = 2**30


def ago(**kw) -> str:
    return (NOW - timedelta(**kw)).isoformat()


def columns(text: str, header: str) -> dict[str, list[str]]:
    """A rendered table read back by its header's column positions (names and cells may hold spaces)."""
    lines = [line for line in text.splitlines() if line.strip()]
    head = next(i for i, line in enumerate(lines) if line.startswith(header + " "))
    found = [(m.group(), m.start()) for m in re.finditer(r"\S+(?: \S+)*", lines[head])]
    out: dict[str, list[str]] = {name: [] for name, _ in found}
    for line in lines[head + 1 :]:
        for i, (name, start) in enumerate(found):
            end = found[i + 1][1] if i + 1 < len(found) else None
            out[name].append(line[start:end].strip())
    return out


def test_a_table_aligns_every_column_and_leaves_the_last_unpadded():
    text = table(["A", "LONGER", "NOTES"], [["x", 1, "free text here"], ["yyyy", None, ""]])
    lines = text.splitlines()
    assert lines[0] == "A     LONGER  NOTES"
    assert lines[1] == "x     1       free text here"
    assert lines[2] == "yyyy  -"  # "" is blank, and trailing blanks are cut


def test_a_cell_with_a_newline_stays_on_its_row():
    assert table(["A", "B"], [["one\ntwo", "x"]]).splitlines()[1] == "one two  x"


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (0, 42, 185, 7380, 3 * 86400 + 4 * 3600 + 59)] == [
        "0s",
        "42s",
        "3m 05s",
        "2h 03m",
        "3d 4h",
    ]
    assert duration(None) == "-"


DEVICES = {
    "telemetry_interval": 10,
    "gpus": [
        {
            "uuid": "GPU-aaa",
            "index": 0,
            "model": "NVIDIA H100 80GB HBM3",
            "mig": True,
            "devices": [
                {
                    "uuid": "MIG-a1",
                    "kind": "mig",
                    "mig_profile": "1g.10gb",
                    "holder": {
                        "user": "ann",
                        "server": "",
                        "profile": "mig",
                        "since": ago(hours=2, minutes=3),
                        "charged_to": "students",
                    },
                    "telemetry": {
                        "at": ago(seconds=3),
                        "ok": True,
                        "error": None,
                        "activity": 12.5,
                        "activity_source": "gpm",
                        "no_activity_reason": None,
                        "utilization": None,
                        "memory_used": 1.5 * GIB,
                        "memory_total": 9.5 * GIB,
                    },
                    "quarantine": [],
                    "liftable": False,
                },
                {
                    "uuid": "MIG-a2",
                    "kind": "mig",
                    "mig_profile": "1g.10gb",
                    "holder": None,
                    "telemetry": None,
                    "quarantine": ["failed 3 starts in a row"],
                    "liftable": True,
                },
            ],
        },
        {
            "uuid": "GPU-bbb",
            "index": 1,
            "model": "NVIDIA A100-SXM4-80GB",
            "mig": False,
            "devices": [
                {
                    "uuid": "GPU-bbb",
                    "kind": "gpu",
                    "mig_profile": None,
                    "holder": {"user": "bob", "server": "train", "profile": "gpu", "since": ago(minutes=5)},
                    "telemetry": {
                        "ok": True,
                        "activity": None,
                        "no_activity_reason": "GPM is not supported on this GPU",
                        "utilization": 40,
                        "memory_used": 40 * GIB,
                        "memory_total": 80 * GIB,
                    },
                    "quarantine": [],
                    "liftable": False,
                },
                {"uuid": "GPU-ccc", "kind": "gpu", "holder": {"hidden": True}, "telemetry": None, "quarantine": []},
            ],
        },
    ],
}


def test_the_gpu_map_groups_devices_under_their_gpu_with_holder_activity_memory_and_quarantine():
    text = cli_admin.render_gpus(DEVICES, NOW)
    cols = columns(text.split("\n\n")[0], "GPU")
    assert cols["GPU"] == ["0", "", "1", ""]  # the physical GPU once, its devices below it
    assert cols["MODEL"][0] == "NVIDIA H100 80GB HBM3" and cols["MODEL"][1] == ""
    assert cols["DEVICE"] == ["MIG-a1", "MIG-a2", "GPU-bbb", "GPU-ccc"]
    assert cols["KIND"] == ["1g.10gb", "1g.10gb", "gpu", "gpu"]
    assert cols["HOLDER"] == ["ann", "(quarantined)", "bob/train", "(hidden)"]
    assert cols["PROFILE"] == ["mig", "-", "gpu", "-"]
    assert cols["SINCE"] == ["2h 03m ago", "-", "5m 00s ago", "-"]
    assert cols["ACTIVITY"] == ["12%", "-", "util 40%", "-"]
    assert cols["MEMORY"] == ["1.5/9.5 GiB", "-", "40.0/80.0 GiB", "-"]
    notes = cols["NOTES"]
    assert notes[1] == "quarantined: failed 3 starts in a row (lift: gpuhub gpus lift MIG-a2)"
    assert notes[2] == "no activity figure: GPM is not supported on this GPU"
    assert text.endswith("4 device(s): 0 free, 3 held, 1 quarantined")


def test_a_malformed_runtime_quota_shows_as_unset_rather_than_failing():
    text = cli_admin.render_quota({**QUOTAS["groups"][1], "properties": "max_devices_per_user"}, [])
    assert "PROBLEM: group 'visitors'" in text


def test_a_host_without_gpus_says_so():
    assert "no GPU devices" in cli_admin.render_gpus({"gpus": []}, NOW)


def test_the_queue_lists_position_wish_charge_and_wait():
    doc = {
        "queue": [
            {
                "user": "bob",
                "server": "",
                "position": 1,
                "count": 1,
                "mig_profile": None,
                "model": None,
                "charged_to": "students",
                "priority": 0,
                "since": ago(seconds=42),
                "waited_s": 42,
            },
            {
                "user": "cy",
                "server": "big",
                "position": 1,
                "count": 2,
                "mig_profile": None,
                "model": "NVIDIA A100-SXM4-80GB",
                "charged_to": "researchers",
                "priority": 10,
                "waited_s": 3700,
            },
        ]
    }
    cols = columns(cli_admin.render_queue(doc), "POS")
    assert cols["USER"] == ["bob", "cy"] and cols["SERVER"] == ["-", "big"]
    assert cols["WANTS"] == ["1 x GPU", "2 x GPU (NVIDIA A100-SXM4-80GB)"]
    assert cols["PRIORITY"] == ["0", "10"] and cols["WAITING"] == ["42s", "1h 01m"]
    assert cli_admin.render_queue({"queue": []}) == "nobody is waiting for a GPU"


QUOTAS = {
    "default": {"profiles": ["cpu"]},
    "keys": list(cli_admin.QUOTA_KEYS),
    "groups": [
        {
            "name": "students",
            "members": 100,
            "config": {"profiles": ["cpu", "gpu", "mig"], "max_devices_per_user": 1},
            "properties": {"profiles": ["cpu", "mig"], "gpu_hours_per_group": "500/month"},
            "effective": {
                "profiles": ["cpu", "mig"],
                "max_devices_per_user": 1,
                "gpu_hours_per_group": "500/month",
            },
            "problems": [],
            "editable": True,
            "budgets": {
                "group": {"budget": "500/month", "used_hours": 41.2, "refills_at": "2026-12-01T00:00:00+00:00"},
                "user": None,
            },
        },
        {
            "name": "visitors",
            "members": 3,
            "config": {},
            "properties": {"max_devices_per_user": "two"},
            "effective": {},
            "problems": ["group 'visitors' (property 'gpuhub'): max_devices_per_user must be a whole number"],
            "editable": True,
            "budgets": {},
        },
    ],
}


def test_the_quota_overview_shows_each_groups_effective_quota_budget_use_and_problems():
    cols = columns(cli_admin.render_quotas(QUOTAS), "GROUP")
    assert cols["GROUP"] == ["(default)", "students", "visitors"]
    assert cols["PROFILES"] == ["cpu", "cpu,mig", "-"]
    assert cols["PER USER"] == ["-", "1", "-"]
    assert "41.20 of 500/month" in cli_admin.render_quotas(QUOTAS)
    assert "PROBLEM: group 'visitors'" in cols["NOTES"][2] and "set at runtime" in cols["NOTES"][1]


def test_one_groups_quota_says_where_each_value_comes_from_and_who_changed_it():
    audit = [
        {
            "at": "2026-11-27T09:00:00+00:00",
            "who": "lab-ann",
            "action": "quota",
            "target": "students",
            "old": {"gpu_hours_per_group": "500/month"},
            "new": {"profiles": ["cpu", "mig"], "gpu_hours_per_group": "500/month"},
        }
    ]
    text = cli_admin.render_quota(QUOTAS["groups"][0], audit)
    assert text.startswith("students: 100 member(s)")
    profiles = next(line for line in text.splitlines() if line.startswith("profiles"))
    assert profiles.split() == ["profiles", "cpu,mig", "cpu,mig", "cpu,gpu,mig"]
    assert "group budget 500/month: 41.20 GPU-hours used, refills 2026-12-01 00:00 UTC" in text
    assert "2026-11-27 09:00 UTC  lab-ann  profiles - -> cpu,mig" in text


USAGE = {
    "since": "2026-11-20T11:05:11+00:00",
    "until": "2026-11-27T11:05:11+00:00",
    "by": "user",
    "unit": "device-hours (one hour of one GPU or one MIG slice)",
    "rows": [
        {"key": "ann", "gpu_hours": 3.5, "leases": 2, "by_reason": {"user": 2.0, "gpu-idle": 1.5}},
        {"key": "bob", "gpu_hours": 0.25, "leases": 1, "by_reason": {"running": 0.25}},
    ],
}


def test_usage_is_a_table_with_a_total_and_the_end_reasons():
    text = cli_admin.render_usage(USAGE)
    assert text.splitlines()[0].startswith("GPU-hours by user, 2026-11-20 11:05 UTC to 2026-11-27 11:05 UTC")
    cols = columns(text, "USER")
    assert cols["USER"] == ["ann", "bob", "total"]
    assert cols["GPU-HOURS"] == ["3.50", "0.25", "3.75"]
    assert cols["BY END REASON"][0] == "user 2.00, gpu-idle 1.50"
    assert "no GPU use" in cli_admin.render_usage({**USAGE, "rows": []})


def test_usage_as_csv_has_one_column_per_end_reason():
    rows = list(csv.DictReader(io.StringIO(cli_admin.usage_csv(USAGE))))
    assert list(rows[0]) == ["user", "gpu_hours", "leases", "hours_gpu-idle", "hours_running", "hours_user"]
    assert rows[0] == {
        "user": "ann",
        "gpu_hours": "3.5",
        "leases": "2",
        "hours_gpu-idle": "1.5",
        "hours_running": "0",
        "hours_user": "2.0",
    }
