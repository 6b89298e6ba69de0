"""The class-day benchmark: a hand-written trace through the real admission, ledger and culling code."""

import json

import pytest

from benchmarks import class_day
from benchmarks.class_day import END_OF_DAY, HUB_CULL, TraceError, clock

# 2 GPUs, 4 students. gpuhub policy: GPU idle for 10 min stops a server (warning 2 min).
#   walker  runs one cell and walks away, tab open
#   thinker runs a cell, thinks for 28 min, runs another, stops at 09:40
#   waiter  arrives while both GPUs are held, runs one cell at 09:20, walks away
#   trainer arrives after the waiter, gets the other GPU at 09:12, trains 09:13-09:38, stops at 09:39
TRACE = [
    '{"student": "walker", "arrive": "09:00:00", "jobs": [["09:01:00", 60]], "stop": null, "tab": "open"}',
    '{"student": "thinker", "arrive": "09:00:00", "jobs": [["09:01:00", 60], ["09:30:00", 60]], "stop": "09:40:00",'
    ' "tab": "closed at 09:35:00"}',
    '{"student": "waiter", "arrive": "09:05:00", "jobs": [["09:20:00", 60]]}',
    '{"student": "trainer", "arrive": "09:06:00", "jobs": [["09:13:00", 1500]], "stop": "09:39:00"}',
]
GPUHUB, BASELINE = class_day.policies(gpu_idle_timeout=600, warning=120)


def t(text: str) -> float:
    return class_day.parse_time(text, "test")


@pytest.fixture(scope="module")
def gpuhub():
    return class_day.simulate(class_day.parse(TRACE), GPUHUB, devices=2)


@pytest.fixture(scope="module")
def baseline():
    return class_day.simulate(class_day.parse(TRACE), BASELINE, devices=2)


def test_a_student_who_walked_away_is_culled_after_the_gpu_idle_timeout_and_never_by_the_baseline(gpuhub, baseline):
    # The cell ends at 09:02:00; that sample starts the idle clock; 10 min later the server stops.
    assert gpuhub.ended("walker") == [(t("09:12:00"), "gpu-idle")]
    assert ("walker", "warned: gpu-idle") in {(who, what) for at, who, what in gpuhub.log if at == t("09:10:00")}
    # The open tab is activity: the hub culler never stops it; it holds its GPU to the end of the day.
    assert baseline.ended("walker") == [(t("09:40:00"), END_OF_DAY)]
    assert HUB_CULL not in baseline.ends


def test_a_waiting_student_gets_the_device_when_the_culled_lease_ends_and_its_wait_is_measured(gpuhub):
    [waiter] = gpuhub.waited("waiter")
    assert (waiter.why, waiter.asked, waiter.granted, waiter.seconds) == ("arrival", t("09:05:00"), t("09:12:00"), 420)
    [trainer] = gpuhub.waited("trainer")
    assert (trainer.granted, trainer.seconds) == (t("09:12:00"), 360)  # the second GPU, culled in the same sample
    assert gpuhub.ended("trainer") == [(t("09:39:00"), "user")]
    assert gpuhub.refusals == {}


def test_a_student_culled_while_thinking_comes_back_at_their_next_job_and_waits(gpuhub):
    assert gpuhub.ended("thinker") == [(t("09:12:00"), "gpu-idle"), (t("09:40:00"), "user")]
    first, again = gpuhub.waited("thinker")
    assert (first.why, first.seconds) == ("arrival", 0)
    # Back at 09:30 for the next cell: both GPUs are held (the waiter idle since 09:21, the trainer
    # busy); the waiter's server is culled at 09:31 and the thinker gets that GPU.
    assert (again.why, again.asked, again.granted) == ("re-arrival after a cull", t("09:30:00"), t("09:31:00"))
    assert gpuhub.ended("waiter") == [(t("09:31:00"), "gpu-idle")]
    assert gpuhub.culled_with_work_left == 1
    row = class_day.summary(gpuhub)
    assert row["grants"] == 5 and row["wait_median_s"] == 60 and row["jobs_not_run"] == 0


def test_the_baseline_refuses_waiters_after_gpu_wait_timeout(baseline):
    assert baseline.refusals == {"503 No GPU became free within 600 s; try again later": 3}
    assert [w.student for w in baseline.waits] == ["walker", "thinker"]
    assert baseline.ended("thinker") == [(t("09:40:00"), "user")]


def test_idle_time_is_split_by_what_the_student_was_doing(gpuhub):
    held = gpuhub.held
    assert held["busy"] == 4 * 60 + 1500  # four 60 s cells and the training
    assert held["before the first job"] == 60 + 60 + 480 + 60  # each from its grant to its first cell
    assert held["between jobs"] == 600  # the thinker, 09:02-09:12
    assert held["after the last job"] == 600 + 480 + 600 + 60  # walker, thinker, waiter, trainer
    assert gpuhub.allocated == 720 + 1260 + 1140 + 1620  # 12, 21, 19 and 27 min held


GOOD = TRACE[0]


@pytest.mark.parametrize(
    "line, words",
    [
        ("{not json", "not JSON"),
        ('["s1", "09:00"]', "must be a JSON object"),
        ('{"student": "s1", "arrive": "9am"}', "arrive must be a time HH:MM:SS, got '9am'"),
        ('{"student": "s1"}', "arrive is missing"),
        ('{"student": "s1", "arrive": "09:00", "stpo": null}', "unknown keys: stpo"),
        ('{"student": "s1", "arrive": "09:00", "jobs": [["08:59", 10]]}', "job #1 starts at 08:59:00, before arrive"),
        ('{"student": "s1", "arrive": "09:00", "jobs": [["09:01", 120], ["09:02", 5]]}', "before job #1 ends"),
        ('{"student": "s1", "arrive": "09:00", "jobs": [["09:01", 0]]}', "seconds must be a number > 0"),
        ('{"student": "s1", "arrive": "09:00", "jobs": [["09:01", 600]], "stop": "09:05"}', "after stop 09:05:00"),
        ('{"student": "s1", "arrive": "09:00", "jobs": [["09:10", 6]], "tab": "closed at 09:05"}', "after the tab"),
        ('{"student": "s1", "arrive": "09:00", "tab": "shut"}', "tab must be 'open' or 'closed at HH:MM:SS'"),
        ('{"student": "walker", "arrive": "09:01:30"}', "walker arrives at 09:01:30 while their session of line 1"),
    ],
)
def test_a_trace_format_error_is_one_line_naming_the_line(line, words):
    with pytest.raises(TraceError) as e:
        class_day.parse([GOOD, "", line], "day.jsonl")
    message = str(e.value)
    assert message.startswith("day.jsonl:3: ") and words in message and "\n" not in message


def test_an_unknown_profile_names_the_line():
    with pytest.raises(TraceError, match=r"^day.jsonl:1: unknown profile 'big'"):
        class_day.simulate(
            class_day.parse(['{"student": "a", "arrive": "09:00", "profile": "big"}'], "day.jsonl"), GPUHUB
        )


def test_the_command_prints_a_trace_error_in_one_line(tmp_path, capsys):
    trace = tmp_path / "day.jsonl"
    trace.write_text(GOOD + "\n" + '{"student": "x", "arrive": "25:00"}\n')
    assert class_day.main(["--trace", str(trace)]) == 2
    assert capsys.readouterr().err == f"class_day: {trace}:2: arrive must be a time HH:MM:SS, got '25:00'\n"


def test_a_trace_round_trips_through_dump():
    sessions = class_day.parse(TRACE)
    again = class_day.parse(class_day.dump(sessions).splitlines())
    strip = [(s.student, s.arrive, s.jobs, s.stop, s.tab_closed) for s in sessions]
    assert strip == [(s.student, s.arrive, s.jobs, s.stop, s.tab_closed) for s in again]


def test_the_committed_trace_is_the_seeded_generator_output_within_1_5x_supply():
    committed = class_day.load(class_day.DEFAULT_TRACE)
    generated = class_day.generate(seed=1)
    assert class_day.dump(committed) == class_day.dump(generated)
    assert len({s.student for s in committed}) == 120
    peak, _ = class_day.peak_demand(committed)
    assert peak / 14 <= 1.5
    ends = {("stop" if s.stop else "open" if s.tab_closed is None else "closed") for s in committed}
    assert ends == {"stop", "open", "closed"}
    assert any(j.duration >= 20 * 60 for s in committed for j in s.jobs)


def test_the_json_output_has_both_policies(tmp_path, capsys):
    trace = tmp_path / "day.jsonl"
    trace.write_text("\n".join(TRACE) + "\n")
    assert class_day.main(["--trace", str(trace), "--devices", "2", "--gpu-idle-timeout", "10m", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["policy"] for p in out["policies"]] == ["gpuhub", "baseline"]
    assert out["trace"]["peak_demand"] == 3 and out["trace"]["until"] == clock(t("09:40:00"))
