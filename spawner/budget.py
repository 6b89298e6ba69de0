"""GPU-hour budgets and time spans as admins write them. Pure.

A budget is written "20/week": at most 20 device-hours in each calendar week.
Periods are calendar periods in UTC, so a budget refills at a time everyone can
name (Monday 00:00 UTC, the 1st of the month 00:00 UTC), not 7 days after some
first start. A device-hour is one hour of one granted device: a whole GPU or
one MIG slice.

Durations in profiles are written "30m", "2h", "90s" or a number of seconds.
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

PERIODS = ("day", "week", "month")
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
MAX_DURATION_S = 365 * 86400  # longer is no limit at all, and dates past it stop being printable
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class BudgetError(ValueError):
    """A budget or duration is malformed (one line)."""


@dataclass(frozen=True)
class Budget:
    hours: float
    period: str  # "day", "week" or "month"

    def __str__(self) -> str:
        return f"{self.hours:g} GPU-hours per {self.period}"


def parse(value: Any, where: str) -> Budget:
    """ "20/week" (or {"hours": 20, "period": "week"}) -> Budget."""
    if isinstance(value, dict) and set(value) == {"hours", "period"}:
        hours, period = value["hours"], value["period"]
    elif isinstance(value, str) and _BUDGET.match(value):
        m = _BUDGET.match(value)
        hours, period = float(m.group(1)), m.group(2)
    else:
        raise BudgetError(f"{where} must be GPU-hours per period such as '20/week', got {value!r}")
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not _finite(hours) or hours < 0:
        raise BudgetError(f"{where}: hours must be a number >= 0, got {hours!r}"[:200])
    if period not in PERIODS:
        raise BudgetError(f"{where}: period must be one of {', '.join(PERIODS)}, got {period!r}")
    return Budget(abs(float(hours)), period)  # abs: -0.0 would be written back as '-0/week'


def _finite(n: float) -> bool:
    try:
        return math.isfinite(n)
    except OverflowError:  # an int too large for a float (JSON allows any length)
        return False


def duration(value: Any, where: str) -> float:
    """'30m' / '2h' / '90s' / a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        raise BudgetError(f"{where} must be a duration such as 30m or 2h, got {value!r}")
    if isinstance(value, (int, float)):
        if not _finite(value):
            raise BudgetError(f"{where} must be a finite duration such as 30m or 2h, got {value!r}"[:200])
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value):
        m = _DURATION.match(value)
        seconds = float(m.group(1)) * _SECONDS[m.group(2)]
    else:
        raise BudgetError(f"{where} must be a duration such as 30m or 2h, got {value!r}")
    if not math.isfinite(seconds):
        raise BudgetError(f"{where} must be a finite duration such as 30m or 2h, got {value!r}")
    if seconds <= 0:
        raise BudgetError(f"{where} must be longer than 0, got {value!r}")
    if seconds > MAX_DURATION_S:
        raise BudgetError(f"{where} must be at most 365d, got {value!r}")
    return seconds


def window(period: str, now: float) -> tuple[float, float]:
    """(start, end) of the calendar period (UTC) that `now` falls in; `end` is when it refills."""
    t = datetime.fromtimestamp(now, timezone.utc)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = day.replace(day=1)
        end = start + timedelta(days=calendar.monthrange(start.year, start.month)[1])
    else:
        raise BudgetError(f"unknown budget period {period!r}")
    return start.timestamp(), end.timestamp()


def when(ts: float) -> str:
    """A time as the messages write it: 'Mon 2026-11-30 00:00 UTC'."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a %Y-%m-%d %H:%M UTC")


def span(seconds: float) -> str:
    """'25 min', '4 h', '1 h 30 min', '40 s'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    h, m = divmod(minutes, 60)
    if not h:
        return f"{m} min"
    return f"{h} h" if not m else f"{h} h {m} min"


@dataclass(frozen=True)
class Use:
    """How much of one budget is used: a user's share of a quota, or a whole group's."""

    source: str  # the quota (group name or "(default)")
    scope: str  # "user" or "group"
    budget: Budget
    used: float  # device-hours in the current period
    refill: float  # when the period ends

    @property
    def left(self) -> float:
        return self.budget.hours - self.used

    def refusal(self) -> str:
        who = "your" if self.scope == "user" else f"group {self.source}'s"
        return (
            f"{who} GPU-hour budget is used up: {self.used:.2f} of {self.budget.hours:g} GPU-hours this"
            f" {self.budget.period}; it refills {when(self.refill)}"
        )
