"""How the `gpuhub` command prints: aligned tables, ages, sizes. Pure."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

EMPTY = "-"


def cell(value: Any) -> str:
    if value is None:
        return EMPTY
    if isinstance(value, float):
        return f"{value:g}"
    return " ".join(str(value).split())  # a newline or tab in a value must not break the rows


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned to their widest cell, two spaces apart; the last column is not padded (it
    may hold free text). None shows as "-", "" as blank."""
    lines = [[str(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = []
    for line in lines:
        padded = [text.ljust(widths[i]) for i, text in enumerate(line[:-1])] + [line[-1]]
        out.append("  ".join(padded).rstrip())
    return "\n".join(out)


def csv_cell(value: Any) -> str:
    """One CSV cell, safe to open in a spreadsheet (the console's export uses it too)."""
    text = "" if value is None else str(value)
    # A cell a spreadsheet would run as a formula (a user or group named "=cmd|...") is quoted as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([csv_cell(h) for h in headers])
    writer.writerows([[csv_cell(c) for c in row] for row in rows])
    return buf.getvalue().rstrip("\n")


def duration(seconds: float | None) -> str:
    """42s, 3m 05s, 2h 03m, 3d 4h: two units at most, for a glance."""
    if seconds is None:
        return EMPTY
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def parse_time(text: str | None) -> datetime | None:
    """An ISO time from the hub's JSON; None if absent or unreadable (the table shows "-")."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def age(text: str | None, now: datetime) -> str:
    """How long ago an ISO time was: "2h 03m ago"."""
    moment = parse_time(text)
    return EMPTY if moment is None else f"{duration((now - moment).total_seconds())} ago"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f}"


def hours(value: float | None) -> str:
    """GPU-hours: two decimals, enough for a report; the JSON keeps the hub's precision."""
    return EMPTY if value is None else f"{value:.2f}"
