"""The audit log of lab admins' changes: who, when, what, on what, old -> new.

One row per change in the table `gpuhub_audit`, next to JupyterHub's tables and `gpuhub_usage` in the
hub's database (SQLite or PostgreSQL), so the log outlives restarts and follows the hub's database
choice. The table is created if missing; JupyterHub's ORM tables are never touched. Times are epoch
seconds (UTC); `old` and `new` are JSON.

Actions (docs/api.md): `quota` (a group's quota edited; target the group), `lift` (a device's
quarantine lifted; target the device UUID), `dequeue` (a waiter removed from the GPU queue; target
"user/server").

Every `AuditStore` method blocks on the database: callers run them in a thread, never on the event loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from . import usage

TABLE = "gpuhub_audit"
ACTIONS = ("quota", "lift", "dequeue")
MAX_LIMIT = 1000


class AuditError(ValueError):
    """A malformed entry or question (one line)."""


@dataclass(frozen=True)
class Entry:
    at: float
    who: str
    action: str
    target: str
    old: Any = None
    new: Any = None

    def as_json(self) -> dict[str, Any]:
        at = datetime.fromtimestamp(self.at, timezone.utc).isoformat(timespec="seconds")
        return {
            "at": at,
            "who": self.who,
            "action": self.action,
            "target": self.target,
            "old": self.old,
            "new": self.new,
        }


metadata = sa.MetaData()
audit_table = sa.Table(
    TABLE,
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hub", sa.String(255), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("who", sa.String(255), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.String(512), nullable=False),
    sa.Column("old", sa.Text, nullable=True),
    sa.Column("new", sa.Text, nullable=True),
    sa.Index(f"ix_{TABLE}_hub_at", "hub", "at"),
    sa.Index(f"ix_{TABLE}_hub_target", "hub", "target"),
)
_c = audit_table.c


class AuditStore:
    """This hub's audit rows in the database at `db_url`. Blocking: call from a thread.

    `hub_id` tells this hub's rows apart from another hub's sharing the database.
    """

    def __init__(self, db_url: str, hub_id: str, clock: Callable[[], float] = time.time):
        if not hub_id:
            raise AuditError("hub_id must not be empty")
        self.hub_id = hub_id
        self.clock = clock
        self.engine = usage.engine_for(db_url, metadata)

    def close(self) -> None:
        self.engine.dispose()

    def record(self, who: str, action: str, target: str, old: Any = None, new: Any = None) -> Entry:
        """Write one entry, now; returns it."""
        if action not in ACTIONS:
            raise AuditError(f"unknown audit action {action!r}; use one of {', '.join(ACTIONS)}")
        if not who or not target:
            raise AuditError("an audit entry needs who and a target")
        entry = Entry(self.clock(), who, action, target, old, new)
        row = {
            "hub": self.hub_id,
            "at": entry.at,
            "who": who,
            "action": action,
            "target": target,
            "old": None if old is None else json.dumps(old, sort_keys=True),
            "new": None if new is None else json.dumps(new, sort_keys=True),
        }
        with self.engine.begin() as conn:
            conn.execute(audit_table.insert(), [row])
        return entry

    def entries(self, limit: int = 100, *, target: str | None = None) -> list[Entry]:
        """The newest `limit` entries, newest first (of one target, when given)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise AuditError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {limit!r}")
        where = [_c.hub == self.hub_id]
        if target is not None:
            where.append(_c.target == target)
        query = (
            sa.select(_c.at, _c.who, _c.action, _c.target, _c.old, _c.new)
            .where(*where)
            .order_by(_c.at.desc(), _c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Entry(r.at, r.who, r.action, r.target, _loads(r.old), _loads(r.new)) for r in conn.execute(query)]


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
