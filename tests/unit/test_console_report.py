"""The console's figures: bars, end reasons, budgets, device counts and the CSV export (pure)."""

import csv
import io

import pytest

from spawner.console import report

ROWS = [
    {"key": "ann", "gpu_hours": 4.0, "leases": 3, "by_reason": {"gpu-idle": 1.5, "user": 2.5}},
    {"key": "bob", "gpu_hours": 1.0, "leases": 1, "by_reason": {"running": 1.0}},
    {"key": '=HYPERLINK("x")', "gpu_hours": 0.25, "leases": 1, "by_reason": {"gpu-idle": 0.25}},
]


def test_bars_are_scaled_to_the_longest_and_keep_the_hubs_order():
    bars = report.bars(ROWS)
    assert [b["key"] for b in bars] == ["ann", "bob", '=HYPERLINK("x")']
    assert [b["percent"] for b in bars] == [100.0, 25.0, 6.2]
    assert bars[0]["by_reason"] == {"gpu-idle": 1.5, "user": 2.5}


def test_bars_of_no_use_at_all_have_no_length():
    assert report.bars([{"key": "ann", "gpu_hours": 0, "leases": 0}]) == [
        {"key": "ann", "gpu_hours": 0.0, "percent": 0.0, "by_reason": {}}
    ]
    assert report.bars([]) == []


def test_end_reasons_add_up_over_rows_with_the_hubs_words_most_first():
    reasons = report.end_reasons(ROWS)
    assert [(r["reason"], r["gpu_hours"]) for r in reasons] == [("user", 2.5), ("gpu-idle", 1.75), ("running", 1.0)]
    assert reasons[1]["meaning"] == "its GPU was idle"


def test_culling_takes_back_the_hours_of_servers_it_stopped():
    assert report.taken_back_by_culling(ROWS) == 1.75
    assert report.taken_back_by_culling([]) == 0


@pytest.mark.parametrize("by", [None, "", "user", "group", "profile", "device", "model", "reason"])
def test_every_breakdown_of_the_hub_is_accepted(by):
    assert report.check_breakdown(by) == (by or "user")


@pytest.mark.parametrize("by", ["users", "USER", "user;drop", "0"])
def test_an_unknown_breakdown_is_refused_in_one_line_naming_it(by):
    with pytest.raises(report.ReportError, match=r"^by must be one of user, group.*got") as e:
        report.check_breakdown(by)
    assert "\n" not in str(e.value)


def test_the_csv_has_one_column_per_end_reason_and_neutralises_formulas():
    answer = {"by": "user", "since": "2026-11-01T00:00:00+00:00", "until": "2026-11-27T00:00:00+00:00", "rows": ROWS}
    rows = list(csv.reader(io.StringIO(report.usage_csv(answer))))
    assert rows[0] == ["user", "gpu_hours", "leases", "since", "until", "gpu-idle", "running", "user"]
    assert rows[1] == ["ann", "4.0000", "3", answer["since"], answer["until"], "1.5000", "0.0000", "2.5000"]
    assert rows[3][0] == '\'=HYPERLINK("x")'  # a spreadsheet shows it, never runs it
    assert len(rows) == 4


def test_the_csv_of_an_empty_period_is_its_header():
    assert report.usage_csv({"by": "group", "rows": []}) == "group,gpu_hours,leases,since,until\n"


QUOTAS = {
    "groups": [
        {
            "name": "students",
            "budgets": {
                "group": {"budget": "500/month", "used_hours": 41.2, "refills_at": "2026-12-01T00:00:00+00:00"},
                "user": {
                    "budget": "20/week",
                    "refills_at": "2026-11-30T00:00:00+00:00",
                    "members": [{"user": "ann", "used_hours": 25.0}, {"user": "bob", "used_hours": 3.5}],
                },
            },
        },
        {"name": "staff", "budgets": {}},
    ]
}


def test_budgets_are_listed_per_group_and_member_with_what_is_left():
    rows = report.budgets(QUOTAS)
    assert [(r["group"], r["scope"], r["user"]) for r in rows] == [
        ("students", "group", ""),
        ("students", "user", "ann"),
        ("students", "user", "bob"),
    ]
    assert rows[0]["left_hours"] == 458.8 and rows[0]["percent_used"] == 8.2
    assert rows[1]["left_hours"] == 0.0 and rows[1]["percent_used"] == 100.0  # over budget: nothing left
    assert rows[2]["left_hours"] == 16.5 and rows[2]["refills_at"] == "2026-11-30T00:00:00+00:00"


def test_a_budget_the_console_cannot_read_shows_used_hours_only():
    rows = report.budgets({"groups": [{"name": "g", "budgets": {"group": {"budget": "lots", "used_hours": 2}}}]})
    assert rows[0]["left_hours"] is None and rows[0]["percent_used"] is None and rows[0]["used_hours"] == 2.0
    assert report.budgets({}) == []


def test_devices_are_counted_held_free_or_quarantined():
    devices = {
        "gpus": [
            {"devices": [{"holder": {"user": "ann"}, "quarantine": []}, {"holder": None, "quarantine": []}]},
            {"devices": [{"holder": None, "quarantine": ["failed its starts"]}, {"holder": {"hidden": True}}]},
        ]
    }
    assert report.device_summary(devices) == {"gpus": 2, "devices": 4, "held": 2, "free": 1, "quarantined": 1}
