"""What gpuhub's read endpoints answer, from plain data: the GPU map, the queue, quota rows, merged usage."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

from spawner import admin_views, budget, quota
from spawner.allocator import Lease, Waiter
from spawner.devices import Device, Request

H100 = "NVIDIA H100 80GB HBM3"
GPU0 = Device("GPU-0", model="A100", index=0)
GPU1 = Device("GPU-1", model="A100", index=1)
SLICES = [
    Device(f"MIG-{i}", model=H100, mig_profile="1g.10gb", parent="GPU-m", index=i, parent_index=2) for i in range(2)
]
T = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc).timestamp()


def everyone(_user: str) -> bool:
    return True


def test_the_gpu_map_groups_slices_under_their_gpu_in_nvml_order_with_holders_and_quarantine():
    lease = Lease("l1", "ann/", ("MIG-1",), "c1", "students")
    servers = {"ann/": SimpleNamespace(profile="mig", started=T)}
    reading = {"at": T, "ok": True, "activity": None, "no_activity_reason": "MIG slices report no utilization"}
    gpus = admin_views.gpu_map(
        [SLICES[1], GPU1, SLICES[0], GPU0],
        {"MIG-1": lease},
        servers,
        {"MIG-1": reading},
        {"GPU-1": ["failed 3 starts in a row"]},
        liftable=lambda uuid: uuid == "GPU-1",
        may_read=everyone,
    )
    assert [(g["uuid"], g["index"], g["mig"]) for g in gpus] == [
        ("GPU-0", 0, False),
        ("GPU-1", 1, False),
        ("GPU-m", 2, True),
    ]
    assert [d["uuid"] for d in gpus[2]["devices"]] == ["MIG-0", "MIG-1"]
    held = gpus[2]["devices"][1]
    assert held["kind"] == "mig" and held["mig_profile"] == "1g.10gb" and held["telemetry"] == reading
    assert held["holder"] == {
        "user": "ann",
        "server": "",
        "profile": "mig",
        "since": "2026-11-27T09:00:00+00:00",
        "charged_to": "students",
    }
    free = gpus[0]["devices"][0]
    assert free["holder"] is None and free["telemetry"] is None and free["quarantine"] == [] and not free["liftable"]
    assert gpus[1]["devices"][0]["quarantine"] == ["failed 3 starts in a row"] and gpus[1]["devices"][0]["liftable"]


def test_a_holder_the_caller_may_not_read_is_hidden_but_the_device_shows_as_held():
    lease = Lease("l1", "bob/big", ("GPU-0",), "c1", "researchers")
    [gpu] = admin_views.gpu_map([GPU0], {"GPU-0": lease}, {}, {}, {}, lambda u: False, lambda user: user == "ann")
    assert gpu["devices"][0]["holder"] == {"hidden": True}


def test_a_lease_still_starting_shows_its_holder_without_profile_or_time():
    lease = Lease("l1", "ann/gpu", ("GPU-0",), None, "students")
    [gpu] = admin_views.gpu_map([GPU0], {"GPU-0": lease}, {}, {}, {}, lambda u: False, everyone)
    assert gpu["devices"][0]["holder"] == {
        "user": "ann",
        "server": "gpu",
        "profile": None,
        "since": None,
        "charged_to": "students",
    }


def test_queue_rows_say_position_and_waited_time_and_leave_out_who_the_caller_may_not_read():
    waiters = [
        Waiter("a", "ann/", Request(1), 0, 0, "students", since=T - 42),
        Waiter("b", "bob/", Request(1, mig_profile="1g.10gb"), 10, 1, "researchers", since=T - 5),
        Waiter("c", "cat/x", Request(2), 0, 2, "students", since=T - 1.4),
    ]
    positions = {"ann/": (1, 2), "bob/": (1, 1), "cat/x": (2, 2)}
    rows = admin_views.queue_rows(waiters, positions.get, T, lambda user: user != "bob")
    assert [(r["user"], r["server"], r["position"], r["count"], r["waited_s"]) for r in rows] == [
        ("ann", "", 1, 1, 42),
        ("cat", "x", 2, 2, 1),
    ]
    assert rows[0]["since"] == "2026-11-27T08:59:18+00:00" and rows[0]["charged_to"] == "students"
    assert rows[0]["mig_profile"] is None and rows[0]["model"] is None and rows[0]["priority"] == 0


def test_a_group_row_shows_config_property_and_their_merge_as_the_spawner_reads_them():
    row, effective = admin_views.group_quota_row(
        "students",
        100,
        {"profiles": ["cpu", "mig"], "max_devices_per_user": 1, "gpu_hours_per_user": "20/week"},
        {"max_devices_per_user": 2, "gpu_hours_per_group": {"hours": 500, "period": "month"}},
        editable=True,
    )
    assert row["effective"] == {
        "profiles": ["cpu", "mig"],
        "max_devices_per_user": 2,
        "max_devices_per_group": None,
        "priority": 0,
        "gpu_hours_per_user": "20/week",
        "gpu_hours_per_group": "500/month",
    }
    assert row["config"]["max_devices_per_user"] == 1 and row["properties"]["max_devices_per_user"] == 2
    assert row["problems"] == [] and row["editable"] and row["members"] == 100
    assert effective.budgets == {"user": budget.Budget(20, "week"), "group": budget.Budget(500, "month")}


def test_a_malformed_property_shows_its_problem_and_grants_nothing():
    row, effective = admin_views.group_quota_row("students", 3, None, {"max_devices_per_user": "lots"}, False)
    assert effective is None and row["effective"] is None
    assert len(row["problems"]) == 1 and "max_devices_per_user" in row["problems"][0]
    assert row["properties"] == {"max_devices_per_user": "lots"} and not row["editable"]


def test_a_group_without_any_quota_has_no_effective_quota():
    row, effective = admin_views.group_quota_row("lab-admins", 2, None, None, True)
    assert effective is None and row["effective"] is None and row["problems"] == [] and row["budgets"] == {}


def test_budgets_show_the_group_use_and_every_member_most_used_first():
    q = quota.Quota(
        "students", gpu_hours_per_user=budget.Budget(20, "week"), gpu_hours_per_group=budget.Budget(500, "month")
    )
    windows = admin_views.budget_windows(q, T)
    out = admin_views.budgets_json(windows, 41.23456, ["ann", "bob", "cat"], {"bob": 3.5, "ann": 0.25})
    assert out["group"] == {"budget": "500/month", "used_hours": 41.2346, "refills_at": "2026-12-01T00:00:00+00:00"}
    assert out["user"]["budget"] == "20/week" and out["user"]["refills_at"] == "2026-11-30T00:00:00+00:00"
    assert out["user"]["members"] == [
        {"user": "bob", "used_hours": 3.5},
        {"user": "ann", "used_hours": 0.25},
        {"user": "cat", "used_hours": 0.0},
    ]


def test_a_quarantine_reason_names_its_containers_owner_only_to_who_may_see_them():
    from spawner.admin_views import _redacted

    reason = "container abcdef123456 of ann/train: devices no lease accounts for"
    assert _redacted(reason, lambda user: user == "ann") == reason
    assert _redacted(reason, lambda user: False) == (
        "container abcdef123456 of another user: devices no lease accounts for"
    )
    assert _redacted("failed 3 starts in a row", lambda user: False) == "failed 3 starts in a row"
