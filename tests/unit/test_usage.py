"""GPU-hour records: SQLite in tmp_path, and PostgreSQL in a throwaway cluster where one can be run."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from spawner import usage
from spawner.usage import Record, UsageError, UsageStore

H = 3600.0
T0 = datetime(2026, 11, 2, tzinfo=timezone.utc).timestamp()  # a Monday, midnight UTC


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def rec(lease, device="GPU-0", *, user="ada", charged_to="students", profile="mig", start=T0, **more) -> Record:
    fields = {"server": "", "model": "NVIDIA A100", "mig_profile": "1g.10gb", **more}
    return Record(lease, device, user, fields.pop("server"), charged_to, profile, start=start, **fields)


# PostgreSQL, where this machine has its server and the venv a driver


def _pg_driver() -> str | None:
    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module):
            return driver
    return None


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL cluster on a unix socket; its URL (database `postgres`). Runs as `postgres` if root."""
    driver, bindir = _pg_driver(), _pg_bin()
    if driver is None or bindir is None:
        pytest.skip("PostgreSQL needs its server in /usr/lib/postgresql and psycopg2 or psycopg in the venv")
    as_user: list[str] = []
    home = Path(tempfile.mkdtemp(prefix="gpuhub-pg-"))  # not tmp_path: pytest's is private to root
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(home, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = home / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=60)

    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "gpuhub", "-A", "trust", "--no-sync")
        options = f"-k {home} -p {port} -c listen_addresses='' -c fsync=off"
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL cluster: {e}")
    try:
        yield f"postgresql+{driver}://gpuhub@/postgres?host={home}&port={port}"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}"
        return
    url = request.getfixturevalue("pg_cluster")
    yield url
    engine = sa.create_engine(url)
    usage.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def clock():
    return Clock(T0 + 100 * H)


@pytest.fixture
def store(db_url, clock):
    s = UsageStore(db_url, "hub-a", clock=clock)
    yield s
    s.close()


# what one lease counts


def test_a_closed_lease_counts_only_its_part_inside_the_window(store):
    store.opened([rec("L1", start=T0)])
    store.closed("L1", T0 + 10 * H, "user")
    assert store.used_hours(T0 + 2 * H, T0 + 5 * H) == pytest.approx(3)
    assert store.used_hours(T0 - 5 * H, T0 + 1 * H) == pytest.approx(1)
    assert store.used_hours(T0 + 8 * H, T0 + 20 * H) == pytest.approx(2)
    assert store.used_hours(T0 - 5 * H, T0 + 20 * H) == pytest.approx(10)
    assert store.used_hours(T0 + 10 * H, T0 + 20 * H) == 0
    assert store.used_hours(T0 - 5 * H, T0) == 0


def test_an_open_lease_counts_up_to_now_and_no_further_than_until(store, clock):
    store.opened([rec("L1", start=T0)])
    clock.now = T0 + 3 * H
    assert store.used_hours(T0 - H, T0 + 50 * H) == pytest.approx(3)
    assert store.used_hours(T0 - H, T0 + 2 * H) == pytest.approx(2)
    clock.now = T0 + 4.5 * H
    assert store.usage(T0 - H, T0 + 50 * H, "user")[0]["gpu_hours"] == 4.5


def test_a_lease_with_two_devices_counts_hours_per_device_and_is_one_lease(store):
    store.opened([rec("L1", "GPU-0"), rec("L1", "GPU-1")])
    store.closed("L1", T0 + 2 * H, "idle")
    [row] = store.usage(T0, T0 + 10 * H, "user")
    assert row == {"key": "ada", "gpu_hours": 4.0, "leases": 1, "by_reason": {"idle": 4.0}}


def test_opening_a_lease_again_leaves_the_first_row_as_it_was(store):
    store.opened([rec("L1", start=T0)])
    store.opened([rec("L1", start=T0 + 5 * H, user="someone-else"), rec("L1", start=T0 + 5 * H)])
    [row] = store.open_leases()["L1"]
    assert row.user == "ada" and row.start == T0
    assert store.used_hours(T0, T0 + 10 * H) == pytest.approx(10)


def test_opening_nothing_writes_nothing(store):
    store.opened([])
    assert store.open_leases() == {}


def test_a_second_close_changes_nothing_and_the_first_reason_wins(store):
    store.opened([rec("L1", "GPU-0"), rec("L1", "GPU-1")])
    assert store.closed("L1", T0 + 2 * H, "budget") == 2
    assert store.closed("L1", T0 + 9 * H, "user") == 0
    assert store.closed("never-opened", T0 + 9 * H, "user") == 0
    [row] = store.usage(T0, T0 + 10 * H, "reason")
    assert row == {"key": "budget", "gpu_hours": 4.0, "leases": 1, "by_reason": {"budget": 4.0}}


def test_an_unknown_end_reason_is_refused_in_one_line(store):
    store.opened([rec("L1")])
    with pytest.raises(UsageError, match=r"^unknown end reason 'stopped'; use one of user, admin, ") as e:
        store.closed("L1", T0 + H, "stopped")
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError):
        store.close_lost(set(), reason="running")
    assert list(store.open_leases()) == ["L1"]


def test_every_end_reason_has_words_for_people():
    assert all(words and "\n" not in words for words in usage.END_REASONS.values())
    assert usage.RUNNING not in usage.END_REASONS


# heartbeats and restarts


def test_seen_marks_only_the_open_rows_of_the_given_leases(store):
    store.opened([rec("L1"), rec("L2"), rec("L3")])
    store.closed("L3", T0 + H, "user")
    store.seen(["L1", "L3"], T0 + 2 * H)
    store.seen([], T0 + 3 * H)
    leases = store.open_leases()
    assert leases["L1"][0].last_seen == T0 + 2 * H
    assert leases["L2"][0].last_seen is None
    assert "L3" not in leases


def test_close_lost_ends_leases_that_are_not_live_at_their_last_sighting(store):
    store.opened([rec("seen", "GPU-0"), rec("seen", "GPU-1"), rec("never-seen", "GPU-2"), rec("live", "GPU-3")])
    store.opened([rec("closed", "GPU-4")])
    store.closed("closed", T0 + H, "user")
    store.seen(["seen", "live"], T0 + 6 * H)
    assert store.close_lost({"live"}) == ["never-seen", "seen"]
    assert list(store.open_leases()) == ["live"]
    hours = {row["key"]: row for row in store.usage(T0, T0 + 50 * H, "device")}
    assert hours["GPU-0"]["gpu_hours"] == hours["GPU-1"]["gpu_hours"] == 6.0
    assert hours["GPU-0"]["by_reason"] == {"lost": 6.0}
    assert "GPU-2" not in hours  # ended at its start: no time inside the window, and no overlap at all
    assert hours["GPU-4"]["by_reason"] == {"user": 1.0}
    assert store.close_lost({"live"}) == []


def test_close_lost_with_nothing_live_ends_every_open_lease(store):
    store.opened([rec("L1"), rec("L2", "GPU-1")])
    assert store.close_lost(set(), reason="crashed") == ["L1", "L2"]
    assert store.open_leases() == {}


def test_open_leases_lists_this_hubs_open_rows_by_lease(store):
    store.opened([rec("L2", "GPU-1", server="big"), rec("L1", "GPU-0"), rec("L2", "GPU-0", server="big")])
    leases = store.open_leases()
    assert list(leases) == ["L1", "L2"]
    assert [r.device for r in leases["L2"]] == ["GPU-0", "GPU-1"]
    assert leases["L2"][0] == rec("L2", "GPU-0", server="big")


def test_another_hub_in_the_same_database_is_neither_seen_nor_changed(db_url, store):
    other = UsageStore(db_url, "hub-b", clock=store.clock)
    try:
        other.opened([rec("L1", user="bob")])
        store.opened([rec("L1")])
        assert store.closed("L1", T0 + H, "user") == 1
        assert [r.user for r in other.open_leases()["L1"]] == ["bob"]
        assert other.close_lost(set()) == ["L1"]
        assert [row["key"] for row in store.usage(T0, T0 + 10 * H, "user")] == ["ada"]
    finally:
        other.close()


def test_a_restarted_hub_sees_the_same_rows_and_does_not_count_a_reannounced_lease_twice(db_url, clock):
    before = UsageStore(db_url, "hub-a", clock=clock)
    before.opened([rec("L1", "GPU-0"), rec("L1", "GPU-1"), rec("gone", "GPU-2")])
    before.seen(["L1", "gone"], T0 + 3 * H)
    before.close()  # the hub process dies here

    after = UsageStore(db_url, "hub-a", clock=clock)
    try:
        assert sorted(after.open_leases()) == ["L1", "gone"]
        after.opened([rec("L1", "GPU-0"), rec("L1", "GPU-1")])  # rebuilt from its container
        assert after.close_lost({"L1"}) == ["gone"]
        clock.now = T0 + 5 * H
        assert after.used_hours(T0, T0 + 10 * H) == pytest.approx(2 * 5 + 3)
        [row] = [r for r in after.usage(T0, T0 + 10 * H, "reason") if r["key"] == "running"]
        assert row["leases"] == 1 and row["gpu_hours"] == 10.0
    finally:
        after.close()


# reports


@pytest.fixture
def term(store, clock):
    """A few leases between T0 and T0 + 10h; now is T0 + 10h."""
    clock.now = T0 + 10 * H
    store.opened(
        [
            rec("a1", "GPU-0", user="ada", charged_to="students", profile="mig", model="A100"),
            rec("b1", "GPU-1", user="bob", charged_to="students", profile="mig", model="A100", start=T0 + 6 * H),
            rec("c1", "GPU-2", user="cy", charged_to="lab", profile="full", model="H100", mig_profile=""),
            rec("c1", "GPU-3", user="cy", charged_to="lab", profile="full", model="H100", mig_profile=""),
            rec("a2", "GPU-2", user="ada", charged_to="lab", profile="full", model="H100", start=T0 + 5 * H),
        ]
    )
    store.closed("a1", T0 + 2 * H, "gpu-idle")  # ada/students 2h
    # bob/students runs from 6h: 4h
    store.closed("c1", T0 + 4 * H, "time-limit")  # cy/lab 2 devices x 4h = 8h
    store.closed("a2", T0 + 8 * H, "oom-killed")  # ada/lab 3h
    return store


def test_usage_by_group_sums_hours_leases_and_reasons_most_hours_first(term):
    assert term.usage(T0, T0 + 10 * H, "group") == [
        {"key": "lab", "gpu_hours": 11.0, "leases": 2, "by_reason": {"oom-killed": 3.0, "time-limit": 8.0}},
        {"key": "students", "gpu_hours": 6.0, "leases": 2, "by_reason": {"gpu-idle": 2.0, "running": 4.0}},
    ]


def test_usage_by_user_profile_model_device_and_reason(term):
    def keys(by, since=T0, until=T0 + 10 * H, **filters):
        return [(row["key"], row["gpu_hours"]) for row in term.usage(since, until, by, **filters)]

    assert keys("user") == [("cy", 8.0), ("ada", 5.0), ("bob", 4.0)]
    assert keys("profile") == [("full", 11.0), ("mig", 6.0)]
    assert keys("model") == [("H100", 11.0), ("A100", 6.0)]
    assert keys("reason") == [("time-limit", 8.0), ("running", 4.0), ("oom-killed", 3.0), ("gpu-idle", 2.0)]
    assert keys("user", since=T0 + 3 * H, until=T0 + 7 * H) == [("ada", 2.0), ("cy", 2.0), ("bob", 1.0)]


def test_equal_hours_are_sorted_by_key(term):
    rows = term.usage(T0, T0 + 10 * H, "device")
    assert [(row["key"], row["gpu_hours"]) for row in rows] == [
        ("GPU-2", 7.0),
        ("GPU-1", 4.0),
        ("GPU-3", 4.0),
        ("GPU-0", 2.0),
    ]


def test_usage_filters_narrow_the_rows_counted(term):
    def hours(by, **filters):
        return {row["key"]: row["gpu_hours"] for row in term.usage(T0, T0 + 10 * H, by, **filters)}

    assert hours("group", user="ada") == {"lab": 3.0, "students": 2.0}
    assert hours("user", charged_to="students") == {"bob": 4.0, "ada": 2.0}
    assert hours("user", profile="full", charged_to="lab") == {"cy": 8.0, "ada": 3.0}
    assert hours("user", device="GPU-2") == {"cy": 4.0, "ada": 3.0}
    assert hours("user", user="nobody") == {}
    assert hours("user", user=None, charged_to=None) == {"cy": 8.0, "ada": 5.0, "bob": 4.0}


def test_hours_are_rounded_to_four_places(store, clock):
    store.opened([rec("L1", start=T0)])
    store.closed("L1", T0 + 1, "user")
    [row] = store.usage(T0, T0 + H, "user")
    assert row["gpu_hours"] == 0.0003 and row["by_reason"] == {"user": 0.0003}
    assert store.used_hours(T0, T0 + H) == pytest.approx(1 / 3600)


def test_used_hours_of_a_user_within_a_quota_and_of_a_whole_group(term):
    window = (T0, T0 + 10 * H)
    assert term.used_hours(*window, user="ada", charged_to="students") == pytest.approx(2)
    assert term.used_hours(*window, user="ada", charged_to="lab") == pytest.approx(3)
    assert term.used_hours(*window, user="ada") == pytest.approx(5)
    assert term.used_hours(*window, charged_to="lab") == pytest.approx(11)
    assert term.used_hours(*window) == pytest.approx(17)
    assert term.used_hours(T0 + 9 * H, T0 + 20 * H, charged_to="students") == pytest.approx(1)  # bob, up to now


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.usage(T0, T0 + H, "lab"), "cannot break usage down by 'lab'; use one of user, group, profile,"),
        (lambda s: s.usage(T0, T0 + H, "user", group="lab"), "unknown filter 'group'; use one of user, charged_to,"),
        (lambda s: s.usage(T0, T0 + H, "user", user=["ada"]), "filter user must be a string, not ['ada']"),
        (lambda s: s.usage(T0 + H, T0, "user"), "since ("),
        (lambda s: s.used_hours(T0, T0, user="ada"), "since ("),
    ],
)
def test_a_bad_breakdown_filter_or_window_raises_one_line(store, call, message):
    with pytest.raises(UsageError) as e:
        call(store)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# the database


def test_the_table_has_its_indexes_and_its_unique_lease_device(db_url, store):
    inspector = sa.inspect(store.engine)
    assert usage.TABLE in inspector.get_table_names()
    indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes(usage.TABLE)}
    assert {("hub", "end"), ("start",)} <= indexes
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(usage.TABLE)}
    assert ("hub", "lease_id", "device") in uniques


def test_a_database_without_on_conflict_still_inserts_each_row_once(store, monkeypatch):
    monkeypatch.setattr(usage, "_UPSERT_INSERTS", {})
    store.opened([rec("L1", "GPU-0")])
    store.opened([rec("L1", "GPU-0", user="x"), rec("L1", "GPU-1"), rec("L1", "GPU-1")])
    assert [(r.device, r.user) for r in store.open_leases()["L1"]] == [("GPU-0", "ada"), ("GPU-1", "ada")]


def test_a_relative_sqlite_url_is_the_hubs_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = UsageStore("sqlite:///jupyterhub.sqlite", "hub-a")
    s.opened([rec("L1")])
    s.close()
    absolute = UsageStore(f"sqlite:////{str(tmp_path / 'jupyterhub.sqlite').lstrip('/')}", "hub-a")
    try:
        assert list(absolute.open_leases()) == ["L1"]
    finally:
        absolute.close()


def test_an_empty_hub_id_is_refused(tmp_path):
    with pytest.raises(UsageError, match="^hub_id must not be empty$"):
        UsageStore(f"sqlite:///{tmp_path / 'x.sqlite'}", "")


def test_two_threads_writing_the_same_sqlite_file_do_not_lock_each_other_out(tmp_path):
    url = f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}"
    UsageStore(url, "hub-a").close()  # the table exists before both start
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def write(name: str) -> None:
        s = UsageStore(url, "hub-a")
        try:
            start.wait()
            for i in range(60):
                lease = f"{name}-{i}"
                s.opened([rec(lease, "GPU-0", user=name), rec(lease, "GPU-1", user=name)])
                s.seen([lease], T0 + H)
                s.closed(lease, T0 + 2 * H, "user")
                s.close_lost({f"{name}-{i + 1}"} | {f"{other}-{j}" for other in ("t1", "t2") for j in range(60)})
        except BaseException as e:  # handed to the test on the main thread
            errors.append(e)
        finally:
            s.close()

    threads = [threading.Thread(target=write, args=(name,)) for name in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = UsageStore(url, "hub-a")
    try:
        rows = check.usage(T0, T0 + 10 * H, "user")
        assert [(r["key"], r["gpu_hours"], r["leases"]) for r in rows] == [("t1", 240.0, 60), ("t2", 240.0, 60)]
    finally:
        check.close()


# the report window


NOW = datetime(2026, 11, 20, 12, tzinfo=timezone.utc).timestamp()


def utc(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def test_a_period_left_out_is_the_last_30_days():
    assert usage.parse_period(None, None, NOW) == (NOW - 30 * 86400, NOW)
    assert usage.parse_period("", " ", NOW) == (NOW - 30 * 86400, NOW)


@pytest.mark.parametrize(
    "since, expected",
    [
        ("2026-11-01", utc(2026, 11, 1)),
        ("2026-11-01T08:00", utc(2026, 11, 1, 8)),
        ("2026-11-01T08:00:30Z", utc(2026, 11, 1, 8, 0, 30)),
        ("2026-11-01T08:00z", utc(2026, 11, 1, 8)),
        ("2026-11-01T09:00+01:00", utc(2026, 11, 1, 8)),
        ("2026-11-01T03:00-05:00", utc(2026, 11, 1, 8)),
        (" 2026-11-01 ", utc(2026, 11, 1)),
        ("7d", NOW - 7 * 86400),
        ("24h", NOW - 24 * 3600),
        ("30m", NOW - 30 * 60),
        ("2D", NOW - 2 * 86400),
    ],
)
def test_since_is_an_iso_date_or_a_span_back_from_now(since, expected):
    assert usage.parse_period(since, None, NOW) == (expected, NOW)


def test_until_a_date_is_its_midnight():
    assert usage.parse_period("2026-11-01", "2026-11-08", NOW) == (utc(2026, 11, 1), utc(2026, 11, 8))
    assert usage.parse_period("7d", "1d", NOW) == (NOW - 7 * 86400, NOW - 86400)


@pytest.mark.parametrize(
    "since, until, message",
    [
        ("2026-13-01", None, "since '2026-13-01' is not a date such as 2026-11-01 or 7d"),
        ("last week", None, "since 'last week' is not a date such as 2026-11-01 or 7d"),
        ("7w", None, "since '7w' is not a date such as 2026-11-01 or 7d"),
        ("-7d", None, "since '-7d' is not a date such as 2026-11-01 or 7d"),
        (None, "tomorrow", "until 'tomorrow' is not a date such as 2026-11-01 or 7d"),
        ("2026-11-08", "2026-11-01", "since '2026-11-08' is not before until '2026-11-01'"),
        ("2026-11-01", "2026-11-01", "since '2026-11-01' is not before until '2026-11-01'"),
        ("2027-01-01", None, "since '2027-01-01' is not before until '(now)'"),
        ("0d", None, "since '0d' is not before until '(now)'"),
        ("9" * 400 + "d", None, f"since '{'9' * 400}d' is not a date such as 2026-11-01 or 7d"),
    ],
)
def test_a_bad_period_raises_one_line(since, until, message):
    with pytest.raises(UsageError) as e:
        usage.parse_period(since, until, NOW)
    assert str(e.value) == message


def test_a_set_of_users_filters_to_any_of_them(tmp_path):
    """An instructor's view: the records of the course's members, whichever group they were charged to."""
    store = usage.UsageStore(f"sqlite:///{tmp_path / 'u.sqlite'}", "hub", clock=lambda: 5000.0)
    for n, user in enumerate(("ann", "bob", "cy")):
        store.opened([usage.Record(f"l{n}", f"GPU-{n}", user, "", "students", "gpu", "H100", "", 1000.0)])
        store.closed(f"l{n}", 1000.0 + 3600 * (n + 1), "user")
    rows = store.usage(0, 100000, "user", user=frozenset({"ann", "cy"}))
    assert [(r["key"], r["gpu_hours"]) for r in rows] == [("cy", 3.0), ("ann", 1.0)]
    assert store.usage(0, 100000, "user", user=frozenset()) == []
