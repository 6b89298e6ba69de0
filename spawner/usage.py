"""GPU-hour records, kept in the hub's own database so they outlive restarts.

Each GPU lease (one server's hold of one or more devices) leaves one row per device in the table
`gpuhub_usage`, next to JupyterHub's tables in the database of its `db_url` (SQLite by default,
PostgreSQL with the postgres profile). The table is created if missing; JupyterHub's ORM tables are
never touched. Times are epoch seconds (UTC).

A row's life: `opened` when the devices are granted, `seen` on every heartbeat while the server runs,
`closed` with an end reason (a key of `END_REASONS`) when it stops. A hub that restarts calls
`opened` again for the leases it rebuilt from their containers (nothing is counted twice) and then
`close_lost` for the rest, which end at the last time they were seen.

`usage` and `used_hours` sum the overlap of each row with a window, in hours; a row still open
counts up to now. `parse_period` turns the `since`/`until` words of a request into that window.

Every `UsageStore` method blocks on the database: the caller runs them all in one dedicated thread,
never on the event loop.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

TABLE = "gpuhub_usage"
RUNNING = "running"  # the reason `usage` reports for rows still open
DEFAULT_PERIOD_S = 30 * 86400
SQLITE_BUSY_TIMEOUT_S = 15  # the hub process writes the same SQLite file from its own connection

END_REASONS = {  # end reason -> words for people
    "user": "stopped by its user",
    "admin": "stopped by an admin, lab admin or instructor",
    "gpu-idle": "its GPU was idle",
    "idle": "no activity (a profile's idle_timeout, or the hub's idle culler)",
    "time-limit": "it reached its profile's time limit",
    "budget": "its GPU-hour budget ran out",
    "crashed": "the server exited on its own",
    "oom-killed": "out of memory",
    "host-restart": "the host or Docker restarted while it ran",
    "orphan-removed": "orphan container removed",
    "start-failed": "its start failed",
    "lost": "its container was gone when the hub came back (ended at the last time it was seen)",
}


class UsageError(ValueError):
    """A report request or a record is malformed; one line naming what (the REST API answers 400)."""


@dataclass(frozen=True)
class Record:
    """One device of one lease."""

    lease_id: str
    device: str
    user: str
    server: str  # "" for the default server
    charged_to: str  # the quota the devices count against (group name or "(default)")
    profile: str
    model: str
    mig_profile: str  # "" for whole GPUs
    start: float
    end: float | None = None  # None while it runs
    last_seen: float | None = None
    reason: str = ""  # a key of END_REASONS once ended


metadata = sa.MetaData()
usage_table = sa.Table(
    TABLE,
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hub", sa.String(255), nullable=False),
    sa.Column("lease_id", sa.String(255), nullable=False),
    sa.Column("device", sa.String(255), nullable=False),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("server", sa.String(255), nullable=False),
    sa.Column("charged_to", sa.String(255), nullable=False),
    sa.Column("profile", sa.String(255), nullable=False),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("mig_profile", sa.String(255), nullable=False),
    sa.Column("start", sa.Float, nullable=False),
    sa.Column("end", sa.Float, nullable=True),
    sa.Column("last_seen", sa.Float, nullable=True),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.UniqueConstraint("hub", "lease_id", "device", name=f"uq_{TABLE}_lease_device"),
    sa.Index(f"ix_{TABLE}_hub_end", "hub", "end"),
    sa.Index(f"ix_{TABLE}_start", "start"),
)
_c = usage_table.c

#: `usage(by=...)` -> the column it groups by
BREAKDOWNS = {
    "user": _c.user,
    "group": _c.charged_to,
    "profile": _c.profile,
    "device": _c.device,
    "model": _c.model,
    "reason": _c.reason,
}
#: `usage(**filters)` -> the column each filter matches exactly
FILTERS = {"user": _c.user, "charged_to": _c.charged_to, "profile": _c.profile, "device": _c.device}

_RECORD_FIELDS = tuple(Record.__dataclass_fields__)


def engine_for(db_url: str, tables: sa.MetaData) -> sa.engine.Engine:
    """An engine on the hub's own database (SQLite or PostgreSQL) with gpuhub's `tables` created.
    SQLite waits for the hub process's own writes instead of failing at once."""
    url = sa.engine.make_url(db_url)
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S} if url.get_backend_name() == "sqlite" else {}
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    tables.create_all(engine, checkfirst=True)
    return engine


class UsageStore:
    """This hub's GPU-hour rows in the database at `db_url`. Blocking: call from one dedicated thread.

    `hub_id` tells this hub's rows apart from those of another hub sharing the database; every method
    reads and writes only this hub's rows. `clock` gives "now" for rows still open.
    """

    def __init__(self, db_url: str, hub_id: str, clock: Callable[[], float] = time.time):
        if not hub_id:
            raise UsageError("hub_id must not be empty")
        self.hub_id = hub_id
        self.clock = clock
        self.engine = engine_for(db_url, metadata)

    def close(self) -> None:
        self.engine.dispose()

    # writing

    def opened(self, records: Iterable[Record]) -> None:
        """Insert rows; a (lease_id, device) this hub already has is left as it is (a restart re-announces)."""
        rows = [{"hub": self.hub_id, **_row(r)} for r in records]
        if not rows:
            return
        dialect = self.engine.dialect.name
        if dialect in _UPSERT_INSERTS:
            stmt = _UPSERT_INSERTS[dialect](usage_table).on_conflict_do_nothing(
                index_elements=["hub", "lease_id", "device"]
            )
            with self.engine.begin() as conn:
                conn.execute(stmt, rows)
            return
        with self.engine.begin() as conn:  # any other database: insert the rows not there yet
            leases = sorted({row["lease_id"] for row in rows})
            present = conn.execute(
                sa.select(_c.lease_id, _c.device).where(_c.hub == self.hub_id, _c.lease_id.in_(leases))
            )
            taken = {tuple(key) for key in present}
            missing = []
            for row in rows:
                key = (row["lease_id"], row["device"])
                if key not in taken:
                    taken.add(key)  # a record given twice is inserted once
                    missing.append(row)
            if missing:
                conn.execute(usage_table.insert(), missing)

    def seen(self, lease_ids: Iterable[str], at: float) -> None:
        """Heartbeat: these leases' open rows were last seen running at `at`."""
        ids = sorted(set(lease_ids))
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(sa.update(usage_table).where(self._open(), _c.lease_id.in_(ids)).values(last_seen=at))

    def closed(self, lease_id: str, end: float, reason: str) -> int:
        """End the lease's open rows; the number of rows ended (0 when it was already closed: the first reason wins)."""
        _check_reason(reason)
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(usage_table).where(self._open(), _c.lease_id == lease_id).values(end=end, reason=reason)
            )
        return result.rowcount

    def close_lost(self, live_lease_ids: set[str], reason: str = "lost") -> list[str]:
        """After a restart: end the open leases that are not live at their last sighting (or start); their ids."""
        _check_reason(reason)
        live = sorted(set(live_lease_ids))
        with self.engine.begin() as conn:
            lost = conn.execute(
                sa.select(_c.lease_id).distinct().where(self._open(), _c.lease_id.not_in(live)).order_by(_c.lease_id)
            )
            ids = list(lost.scalars())
            if ids:
                conn.execute(
                    sa.update(usage_table)
                    .where(self._open(), _c.lease_id.in_(ids))
                    .values(end=sa.func.coalesce(_c.last_seen, _c.start), reason=reason)
                )
        return ids

    # reading

    def open_leases(self) -> dict[str, list[Record]]:
        """This hub's open rows, by lease id."""
        columns = [_c[name] for name in _RECORD_FIELDS]
        query = sa.select(*columns).where(self._open()).order_by(_c.lease_id, _c.device)
        leases: dict[str, list[Record]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                record = Record(**row._asdict())
                leases.setdefault(record.lease_id, []).append(record)
        return leases

    def usage(self, since: float, until: float, by: str, **filters: str | None) -> list[dict]:
        """GPU hours in [since, until] by `by` (a key of BREAKDOWNS), optionally filtered (keys of FILTERS).

        Each answer row: {"key", "gpu_hours" (4 places), "leases" (distinct), "by_reason" ({reason: hours},
        open rows under "running")}, the most hours first, then by key. A `None` filter is no filter; a
        frozenset of strings matches any of them.
        """
        if by not in BREAKDOWNS:
            raise UsageError(f"cannot break usage down by {by!r}; use one of {', '.join(BREAKDOWNS)}")
        key = BREAKDOWNS[by]
        hours: dict[str, float] = {}
        leases: dict[str, set[str]] = {}
        by_reason: dict[str, dict[str, float]] = {}
        now = self.clock()
        for row in self._overlapping(since, until, filters, key.label("key"), _c.lease_id, _c.reason):
            k = row.key if by != "reason" else (row.reason or RUNNING)
            h = _overlap_hours(row.start, row.end, since, until, now)
            hours[k] = hours.get(k, 0.0) + h
            leases.setdefault(k, set()).add(row.lease_id)
            reasons = by_reason.setdefault(k, {})
            reason = row.reason or RUNNING
            reasons[reason] = reasons.get(reason, 0.0) + h
        answer = [
            {
                "key": k,
                "gpu_hours": round(h, 4),
                "leases": len(leases[k]),
                "by_reason": {r: round(rh, 4) for r, rh in sorted(by_reason[k].items())},
            }
            for k, h in hours.items()
        ]
        answer.sort(key=lambda a: (-a["gpu_hours"], a["key"]))
        return answer

    def used_hours(
        self, since: float, until: float, *, user: str | None = None, charged_to: str | None = None
    ) -> float:
        """GPU hours in [since, until] (unrounded), of one user and/or charged to one quota: for budgets."""
        now = self.clock()
        rows = self._overlapping(since, until, {"user": user, "charged_to": charged_to})
        return sum(_overlap_hours(row.start, row.end, since, until, now) for row in rows)

    # the pieces

    def _open(self) -> sa.ColumnElement[bool]:
        return sa.and_(_c.hub == self.hub_id, _c.end.is_(None))

    def _overlapping(self, since: float, until: float, filters: dict, *columns: sa.ColumnElement) -> list[sa.Row]:
        """The start and end (and `columns`) of this hub's rows that overlap [since, until], in one query."""
        _check_window(since, until)
        where = [_c.hub == self.hub_id, _c.start < until, sa.or_(_c.end.is_(None), _c.end > since)]
        for name, value in filters.items():
            if name not in FILTERS:
                raise UsageError(f"unknown filter {name!r}; use one of {', '.join(FILTERS)}")
            if value is None:
                continue
            if isinstance(value, frozenset) and all(isinstance(v, str) for v in value):  # any of these
                where.append(FILTERS[name].in_(sorted(value)))
                continue
            if not isinstance(value, str):
                raise UsageError(f"filter {name} must be a string, not {value!r}")
            where.append(FILTERS[name] == value)
        query = sa.select(_c.start, _c.end, *columns).where(*where)
        with self.engine.connect() as conn:
            return list(conn.execute(query))


_UPSERT_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # have INSERT .. ON CONFLICT


def _row(record: Record) -> dict:
    return {name: getattr(record, name) for name in _RECORD_FIELDS}


def _check_reason(reason: str) -> None:
    if reason not in END_REASONS:
        raise UsageError(f"unknown end reason {reason!r}; use one of {', '.join(END_REASONS)}")


def _check_window(since: float, until: float) -> None:
    if not since < until:
        raise UsageError(f"since ({since}) must be before until ({until})")


def _overlap_hours(start: float, end: float | None, since: float, until: float, now: float) -> float:
    """Hours of [start, end] within [since, until]; a row still running ends at min(until, now)."""
    stop = min(until, now) if end is None else min(end, until)
    return max(0.0, stop - max(start, since)) / 3600


# the report window

_RELATIVE = re.compile(r"(\d+)([dhm])")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60}
_EARLIEST, _LATEST = 0.0, datetime(9999, 12, 30, tzinfo=timezone.utc).timestamp()


def parse_period(since: str | None, until: str | None, now: float) -> tuple[float, float]:
    """The window (since, until) in epoch seconds for a report request.

    Each may be an ISO date or date-time ("2026-11-01", "2026-11-01T08:00", with "Z" or an offset; without
    one it is UTC), or a span back from `now` ("7d", "24h", "30m"). A date is its midnight, so
    `until=2026-12-01` takes in all of November. Left out (or empty): since 30 days ago, until now.
    """
    start = _instant("since", since, now) if since and since.strip() else now - DEFAULT_PERIOD_S
    stop = _instant("until", until, now) if until and until.strip() else now
    if not start < stop:
        raise UsageError(f"since {since or '(30 days ago)'!r} is not before until {until or '(now)'!r}")
    return start, stop


def _instant(name: str, text: str, now: float) -> float:
    word = text.strip()
    relative = _RELATIVE.fullmatch(word.lower())
    if word[-1:] in ("Z", "z"):
        word = word[:-1] + "+00:00"  # fromisoformat takes "Z" only from Python 3.11
    try:
        if relative:
            at = now - int(relative.group(1)) * _UNIT_S[relative.group(2)]
        else:
            moment = datetime.fromisoformat(word)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            at = moment.timestamp()
    except (ValueError, OverflowError):
        raise UsageError(f"{name} {text!r} is not a date such as 2026-11-01 or 7d") from None
    if not _EARLIEST <= at <= _LATEST:  # the answer names its window as dates, which must exist
        raise UsageError(f"{name} {text!r} is outside 1970-01-01 .. 9999-12-30")
    return at
