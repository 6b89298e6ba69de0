"""GPU-hour budgets, calendar windows (UTC) and durations as admins write them: spawner/budget.py."""

from datetime import datetime, timezone

import pytest

from spawner import budget
from spawner.budget import Budget, BudgetError, Use


def utc(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


# Budgets


@pytest.mark.parametrize(
    "value, hours, period",
    [
        ("20/week", 20.0, "week"),
        ("0.5/day", 0.5, "day"),
        (" 500 / month ", 500.0, "month"),
        ("0/week", 0.0, "week"),
        ({"hours": 20, "period": "week"}, 20.0, "week"),
        ({"hours": 7.5, "period": "day"}, 7.5, "day"),
    ],
)
def test_a_budget_is_gpu_hours_per_calendar_period_as_text_or_a_mapping(value, hours, period):
    assert budget.parse(value, "quota of students") == Budget(hours, period)


def test_a_budget_reads_as_gpu_hours_per_period():
    assert str(budget.parse("20/week", "x")) == "20 GPU-hours per week"
    assert str(budget.parse("0.5/day", "x")) == "0.5 GPU-hours per day"


@pytest.mark.parametrize(
    "value, words",
    [
        ("lots", "must be GPU-hours per period such as '20/week', got 'lots'"),
        ("20", "must be GPU-hours per period"),
        ("/week", "must be GPU-hours per period"),
        ("-3/week", "must be GPU-hours per period"),
        (20, "must be GPU-hours per period"),
        (None, "must be GPU-hours per period"),
        ({"hours": 20}, "must be GPU-hours per period"),
        ({"hours": 20, "period": "week", "rollover": True}, "must be GPU-hours per period"),
        ("20/fortnight", "period must be one of day, week, month, got 'fortnight'"),
        ({"hours": 20, "period": "year"}, "period must be one of day, week, month, got 'year'"),
        ({"hours": -1, "period": "week"}, "hours must be a number >= 0, got -1"),
        ({"hours": "20", "period": "week"}, "hours must be a number >= 0, got '20'"),
        ({"hours": True, "period": "week"}, "hours must be a number >= 0, got True"),
    ],
)
def test_a_malformed_budget_is_refused_in_one_line_naming_where(value, words):
    with pytest.raises(BudgetError) as e:
        budget.parse(value, "quota of group 'ml101': gpu_hours_per_user")
    message = str(e.value)
    assert message.startswith("quota of group 'ml101': gpu_hours_per_user") and words in message
    assert "\n" not in message


# Durations


@pytest.mark.parametrize(
    "value, seconds",
    [("30m", 1800), ("2h", 7200), ("90s", 90), ("1d", 86400), ("1.5h", 5400), (" 10 m ", 600), ("45", 45), (45, 45)],
)
def test_a_duration_is_minutes_hours_seconds_days_or_a_number_of_seconds(value, seconds):
    assert budget.duration(value, "profile 'a100': max_runtime") == seconds


@pytest.mark.parametrize(
    "value, words",
    [
        ("30 min", "must be a duration such as 30m or 2h, got '30 min'"),
        ("h", "must be a duration such as 30m or 2h"),
        ("-5m", "must be a duration such as 30m or 2h"),
        (None, "must be a duration such as 30m or 2h"),
        (True, "must be a duration such as 30m or 2h, got True"),
        ("0m", "must be longer than 0, got '0m'"),
        (0, "must be longer than 0"),
        (-30, "must be longer than 0, got -30"),
    ],
)
def test_a_malformed_duration_is_refused_in_one_line_naming_where(value, words):
    with pytest.raises(BudgetError) as e:
        budget.duration(value, "profile 'a100': max_runtime")
    message = str(e.value)
    assert message.startswith("profile 'a100': max_runtime") and words in message and "\n" not in message


# BUG: json.load (the GPU config file) and the hub's REST API (group properties) both accept NaN, and NaN
# passes every `< 0` / `<= 0` check: a NaN budget never runs out, a NaN limit never stops a server.
@pytest.mark.parametrize(
    "check",
    [
        lambda: budget.duration(float("nan"), "profile 'a100': max_runtime"),
        lambda: budget.parse({"hours": float("nan"), "period": "week"}, "quota of students: gpu_hours_per_user"),
    ],
    ids=["duration", "budget"],
)
def test_a_duration_or_budget_that_is_not_a_number_is_refused(check):
    with pytest.raises(BudgetError):
        check()


# Calendar windows (UTC)


@pytest.mark.parametrize(
    "period, now, start, end",
    [
        ("day", utc(2026, 11, 26, 16, 53), utc(2026, 11, 26), utc(2026, 11, 27)),
        ("day", utc(2026, 11, 26), utc(2026, 11, 26), utc(2026, 11, 27)),
        ("week", utc(2026, 11, 26, 16, 53), utc(2026, 11, 23), utc(2026, 11, 30)),  # Thursday: from Monday
        ("week", utc(2026, 11, 23), utc(2026, 11, 23), utc(2026, 11, 30)),  # Monday 00:00 starts a week
        ("week", utc(2026, 11, 29, 23, 59, 59), utc(2026, 11, 23), utc(2026, 11, 30)),  # Sunday night
        ("week", utc(2026, 12, 31, 12), utc(2026, 12, 28), utc(2027, 1, 4)),  # across the new year
        ("month", utc(2026, 11, 26, 16, 53), utc(2026, 11, 1), utc(2026, 12, 1)),
        ("month", utc(2026, 12, 31, 23, 59), utc(2026, 12, 1), utc(2027, 1, 1)),  # December refills in January
        ("month", utc(2028, 2, 29, 12), utc(2028, 2, 1), utc(2028, 3, 1)),  # a leap February has 29 days
        ("month", utc(2027, 2, 14), utc(2027, 2, 1), utc(2027, 3, 1)),
    ],
)
def test_a_budget_window_is_the_calendar_period_in_utc_that_now_falls_in(period, now, start, end):
    assert budget.window(period, now) == (start, end)


def test_a_leap_february_window_is_29_days_and_a_common_one_28():
    start, end = budget.window("month", utc(2028, 2, 10))
    assert end - start == 29 * 86400
    start, end = budget.window("month", utc(2027, 2, 10))
    assert end - start == 28 * 86400


def test_an_unknown_period_has_no_window():
    with pytest.raises(BudgetError, match="unknown budget period 'year'"):
        budget.window("year", utc(2026, 11, 26))


# Words


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0 s"),
        (-12, "0 s"),
        (40, "40 s"),
        (59.4, "59 s"),
        (60, "1 min"),
        (1500, "25 min"),
        (3600, "1 h"),
        (5400, "1 h 30 min"),
        (14400, "4 h"),
        (8 * 3600 + 60, "8 h 1 min"),
    ],
)
def test_a_span_reads_in_seconds_minutes_or_hours(seconds, text):
    assert budget.span(seconds) == text


def test_a_time_reads_as_weekday_date_and_minute_in_utc():
    assert budget.when(utc(2026, 11, 30)) == "Mon 2026-11-30 00:00 UTC"
    assert budget.when(utc(2026, 12, 1, 9, 5, 59)) == "Tue 2026-12-01 09:05 UTC"


def test_a_users_used_up_budget_says_how_much_of_what_and_when_it_refills():
    use = Use("students", "user", Budget(20, "week"), 19.904, utc(2026, 11, 30))
    assert use.left == pytest.approx(0.096)
    assert use.refusal() == (
        "your GPU-hour budget is used up: 19.90 of 20 GPU-hours this week; it refills Mon 2026-11-30 00:00 UTC"
    )


def test_a_groups_used_up_budget_names_the_group():
    use = Use("ml101", "group", Budget(500, "month"), 512.5, utc(2026, 12, 1))
    assert use.left == -12.5
    assert use.refusal() == (
        "group ml101's GPU-hour budget is used up: 512.50 of 500 GPU-hours this month;"
        " it refills Tue 2026-12-01 00:00 UTC"
    )


def test_a_number_too_large_for_a_float_is_refused_in_one_line_not_an_overflow():
    with pytest.raises(budget.BudgetError, match="hours must be a number >= 0"):
        budget.parse({"hours": 10**400, "period": "week"}, "quota of students: gpu_hours_per_user")
    with pytest.raises(budget.BudgetError, match="must be a finite duration"):
        budget.duration(10**400, "profile 'x': max_runtime")
