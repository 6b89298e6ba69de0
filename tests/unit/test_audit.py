"""The audit log: SQLite in tmp_path, and PostgreSQL in a throwaway cluster where one can be run."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from spawner import audit
from spawner.audit import AuditError, AuditStore

from .test_usage import pg_cluster  # noqa: F401 - the throwaway PostgreSQL cluster fixture

T0 = 1_790_000_000.0


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        self.now += 1  # every entry a second after the one before
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}"
        return
    url = request.getfixturevalue("pg_cluster")
    yield url
    engine = sa.create_engine(url)
    audit.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def store(db_url):
    s = AuditStore(db_url, "hub-a", clock=Clock(T0))
    yield s
    s.close()


def test_an_entry_keeps_who_when_what_and_old_and_new_values(store):
    old = {"profiles": ["cpu"], "gpu_hours_per_user": "20/week"}
    new = {"profiles": "*", "max_devices_per_user": None}
    written = store.record("lab-ann", "quota", "students", old, new)
    [entry] = store.entries()
    assert entry == written
    assert (entry.who, entry.action, entry.target, entry.old, entry.new) == ("lab-ann", "quota", "students", old, new)
    assert entry.at == T0 + 1
    assert entry.as_json()["at"].endswith("+00:00")


def test_entries_come_newest_first_cut_to_the_limit_and_to_one_target(store):
    store.record("ann", "quota", "students", None, {"priority": 1})
    store.record("ann", "lift", "GPU-1", {"quarantine": ["failed 3 starts in a row"]}, {"quarantine": []})
    store.record("bob", "quota", "students", {"priority": 1}, None)
    store.record("bob", "dequeue", "carl/", {"request": "GPU"}, None)
    assert [(e.who, e.action) for e in store.entries()] == [
        ("bob", "dequeue"),
        ("bob", "quota"),
        ("ann", "lift"),
        ("ann", "quota"),
    ]
    assert [e.action for e in store.entries(2)] == ["dequeue", "quota"]
    assert [e.new for e in store.entries(target="students")] == [None, {"priority": 1}]
    assert store.entries(target="researchers") == []


def test_the_log_outlives_the_store_and_keeps_other_hubs_rows_apart(db_url):
    first = AuditStore(db_url, "hub-a", clock=Clock(T0))
    first.record("ann", "quota", "students", None, {"priority": 2})
    first.close()
    again = AuditStore(db_url, "hub-a", clock=Clock(T0 + 10))
    other = AuditStore(db_url, "hub-b", clock=Clock(T0))
    try:
        other.record("zed", "lift", "GPU-9", {"quarantine": ["x"]}, {"quarantine": []})
        assert [e.who for e in again.entries()] == ["ann"]
        assert [e.who for e in other.entries()] == ["zed"]
    finally:
        again.close()
        other.close()


@pytest.mark.parametrize(
    "args, words",
    [
        (("ann", "delete-everything", "students"), "unknown audit action"),
        (("", "quota", "students"), "needs who"),
        (("ann", "quota", ""), "needs who and a target"),
    ],
)
def test_malformed_entries_are_refused_with_one_line_and_nothing_written(store, args, words):
    with pytest.raises(AuditError, match=words):
        store.record(*args)
    assert store.entries() == []


@pytest.mark.parametrize("limit", [0, -1, audit.MAX_LIMIT + 1, True, "10"])
def test_a_limit_out_of_range_is_refused(store, limit):
    with pytest.raises(AuditError, match="limit must be"):
        store.entries(limit)


def test_an_empty_hub_id_is_refused(tmp_path):
    with pytest.raises(AuditError, match="hub_id"):
        AuditStore(f"sqlite:///{tmp_path / 'x.sqlite'}", "")
