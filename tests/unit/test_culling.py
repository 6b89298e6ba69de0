"""The stop/warn policy on a fake clock: spawner/culling.py, one telemetry sample at a time."""

from datetime import datetime, timezone

import pytest

from spawner import culling
from spawner.culling import Activity, BudgetEnd, Limits, Watch

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc).timestamp()  # Mon 2026-11-02 09:00 UTC
WARNING = 300
IDLE = Activity(ok=True, activity=0.0)
BUSY = Activity(ok=True, activity=80.0)
BUDGET_TEXT = "your GPU-hour budget (20 GPU-hours per week)"


def gpu_watch(timeout=1800.0, devices=("GPU-a",), started=T0, **limits) -> Watch:
    return Watch("ada/", started, Limits(gpu_idle_timeout=timeout, **limits), devices)


def sample(watch, readings, t, warning=WARNING, **more) -> culling.Verdict:
    """One telemetry sample `t` seconds after T0: advance the idle clock, then decide."""
    culling.observe(watch, readings, T0 + t)
    return culling.evaluate(watch, T0 + t, warning, **more)


def run(watch, readings, times, **more) -> dict[int, culling.Verdict]:
    return {t: sample(watch, readings, t, **more) for t in times}


# GPU-idle: warning, then stop


def test_an_idle_gpu_gets_no_notice_before_its_warning_window_opens():
    watch = gpu_watch()
    verdicts = run(watch, {"GPU-a": IDLE}, [*range(0, 1500, 60), 1499])
    assert {v.action for v in verdicts.values()} == {"none"}
    assert all(v.notice is None for v in verdicts.values()) and watch.notice is None
    assert watch.gpu_idle_since == T0


def test_an_idle_gpu_is_warned_exactly_once_when_the_warning_window_opens():
    watch = gpu_watch()
    verdicts = run(watch, {"GPU-a": IDLE}, [*range(0, 1800, 60), 1799])
    assert [t for t, v in verdicts.items() if v.action == "warn"] == [1500]
    assert all(verdicts[t].action == "none" for t in verdicts if t != 1500)
    warned = verdicts[1500].notice
    assert warned.reason == "gpu-idle" and warned.stop_at == T0 + 1800
    assert verdicts[1799].notice is watch.notice and watch.notice.stop_at == T0 + 1800  # silent, still shown
    assert warned.message == (
        "Your GPU has been idle for 25 min; this server stops at Mon 2026-11-02 09:30 UTC (in 5 min) unless it is used."
    )


def test_the_notice_counts_down_while_later_samples_are_silent():
    watch = gpu_watch()
    run(watch, {"GPU-a": IDLE}, range(0, 1501, 60))
    later = sample(watch, {"GPU-a": IDLE}, 1620)
    assert later.action == "none" and later.notice is watch.notice
    assert watch.notice.stop_at == T0 + 1800
    assert watch.notice.message == (
        "Your GPU has been idle for 27 min; this server stops at Mon 2026-11-02 09:30 UTC (in 3 min) unless it is used."
    )


def test_an_idle_gpu_is_stopped_at_its_deadline_with_the_reason_its_user_reads_after():
    watch = gpu_watch()
    verdicts = run(watch, {"GPU-a": IDLE}, range(0, 1801, 60))
    assert [t for t, v in verdicts.items() if v.action == "stop"] == [1800]
    stop = verdicts[1800].notice
    assert (stop.reason, stop.stop_at, stop.detail) == ("gpu-idle", T0 + 1800, "its GPU was idle for 30 min")
    assert watch.stopping and watch.notice == stop
    assert stop.stopped(T0 + 1812) == (
        "Stopped at Mon 2026-11-02 09:30 UTC: its GPU was idle for 30 min. Your files are kept."
    )


def test_a_server_whose_gpus_are_all_idle_is_told_its_gpus_have_been_idle():
    watch = gpu_watch(devices=("GPU-a", "GPU-b"))
    verdicts = run(watch, {"GPU-a": IDLE, "GPU-b": Activity(True, 1.0)}, range(0, 1501, 60))
    assert verdicts[1500].action == "warn"
    assert verdicts[1500].notice.message.startswith("Your GPUs have been idle for 25 min;")


def test_a_warning_longer_than_the_timeout_warns_from_the_first_idle_sample():
    watch = gpu_watch(timeout=600)
    first = sample(watch, {"GPU-a": IDLE}, 0, warning=3600)
    assert first.action == "warn" and first.notice.stop_at == T0 + 600
    assert "(in 10 min)" in first.notice.message
    assert sample(watch, {"GPU-a": IDLE}, 60, warning=3600).action == "none"
    assert sample(watch, {"GPU-a": IDLE}, 600, warning=3600).action == "stop"


# Activity clears the notice and resets the clock


def test_activity_above_the_threshold_clears_the_notice_and_restarts_the_idle_clock():
    watch = gpu_watch()
    run(watch, {"GPU-a": IDLE}, range(0, 1561, 60))
    assert watch.notice is not None
    busy = sample(watch, {"GPU-a": BUSY}, 1620)
    assert busy == culling.Verdict("clear") and watch.notice is None and watch.gpu_idle_since is None
    assert sample(watch, {"GPU-a": BUSY}, 1680) == culling.Verdict("none")
    again = run(watch, {"GPU-a": IDLE}, range(1740, 3300, 60))
    assert watch.gpu_idle_since == T0 + 1740
    assert [t for t, v in again.items() if v.action != "none"] == [1740 + 1500]  # a fresh 30 min, not the rest
    assert again[3240].notice.stop_at == T0 + 1740 + 1800


@pytest.mark.parametrize("activity, idle", [(4.9, True), (5.0, False), (5.1, False), (0.0, True)])
def test_a_device_is_idle_only_below_its_threshold(activity, idle):
    watch = gpu_watch()
    culling.observe(watch, {"GPU-a": Activity(True, activity)}, T0)
    assert (watch.gpu_idle_since == T0) is idle


def test_a_profiles_own_threshold_decides_what_counts_as_idle():
    watch = gpu_watch(gpu_idle_threshold=20.0)
    culling.observe(watch, {"GPU-a": Activity(True, 15.0)}, T0)
    assert watch.gpu_idle_since == T0
    culling.observe(watch, {"GPU-a": Activity(True, 20.0)}, T0 + 60)
    assert watch.gpu_idle_since is None


# Missing data is never idle


@pytest.mark.parametrize(
    "devices, readings",
    [
        (("GPU-a",), {"GPU-a": Activity(ok=False, activity=None)}),  # NVML failed for the device
        (("GPU-a",), {"GPU-a": Activity(ok=False, activity=0.0)}),  # a failed reading's figure is no figure
        (("GPU-a",), {"GPU-a": Activity(ok=True, activity=None)}),  # a MIG slice without GPM
        (("GPU-a",), {}),  # no reading at all
        (("GPU-a", "GPU-b"), {"GPU-a": IDLE, "GPU-b": Activity(ok=True, activity=None)}),
        (("GPU-a", "GPU-b"), {"GPU-a": IDLE, "GPU-b": Activity(ok=False, activity=None)}),
        (("GPU-a", "GPU-b"), {"GPU-a": IDLE}),  # the second device was not sampled
    ],
    ids=["not-ok", "not-ok-with-figure", "no-figure", "no-reading", "2nd-no-figure", "2nd-not-ok", "2nd-missing"],
)
def test_a_server_with_a_device_that_has_no_activity_figure_is_never_gpu_idle(devices, readings):
    watch = gpu_watch(devices=devices)
    verdicts = run(watch, readings, range(0, 4 * 3600, 60))
    assert {v.action for v in verdicts.values()} == {"none"}
    assert watch.gpu_idle_since is None and watch.notice is None and not watch.stopping


def test_a_device_losing_its_figure_stops_the_idle_clock_and_clears_the_notice():
    watch = gpu_watch()
    run(watch, {"GPU-a": IDLE}, range(0, 1501, 60))
    lost = sample(watch, {"GPU-a": Activity(ok=False, activity=None)}, 1560)
    assert lost.action == "clear" and watch.gpu_idle_since is None
    assert sample(watch, {"GPU-a": IDLE}, 1620).action == "none" and watch.gpu_idle_since == T0 + 1620


# CPU servers and the other limits


def test_a_cpu_server_is_never_gpu_idle_but_its_time_limit_applies():
    watch = Watch("ada/", T0, Limits(gpu_idle_timeout=600, max_runtime=3600))
    verdicts = run(watch, {"GPU-a": IDLE}, range(0, 3601, 60))
    assert watch.gpu_idle_since is None
    assert {t: v.action for t, v in verdicts.items() if v.action != "none"} == {3300: "warn", 3600: "stop"}
    assert verdicts[3300].notice.message == (
        "This server reaches its time limit of 1 h at Mon 2026-11-02 10:00 UTC (in 5 min) and stops then."
        " Save your work."
    )
    assert verdicts[3600].notice.reason == "time-limit"
    assert verdicts[3600].notice.detail == "it reached its time limit of 1 h"


def test_a_cpu_server_without_activity_is_warned_and_stopped_after_its_idle_timeout():
    watch = Watch("ada/", T0, Limits(idle_timeout=1200))
    assert sample(watch, {}, 800, last_activity=T0 + 100).action == "none"
    warned = sample(watch, {}, 1000, last_activity=T0 + 100)
    assert warned.action == "warn" and warned.notice.reason == "idle" and warned.notice.stop_at == T0 + 1300
    assert warned.notice.message == (
        "This server has had no activity for 15 min; it stops at Mon 2026-11-02 09:21 UTC (in 5 min) unless it is used."
    )
    assert sample(watch, {}, 1060, last_activity=T0 + 1050) == culling.Verdict("clear")  # the user came back
    stop = sample(watch, {}, 2250, last_activity=T0 + 1050)
    assert stop.action == "stop" and stop.notice.detail == "it had no activity for 20 min"


def test_the_idle_timeout_counts_from_the_start_when_there_was_no_activity_since():
    watch = Watch("ada/", T0, Limits(idle_timeout=1200))
    assert sample(watch, {}, 1200).action == "stop"
    other = Watch("bob/", T0, Limits(idle_timeout=1200))
    culling.observe(other, {}, T0 + 1200)
    assert culling.evaluate(other, T0 + 1200, WARNING, last_activity=T0 - 5000).action == "stop"


DETAILS = {
    "gpu-idle": "its GPU was idle for 50 min",
    "time-limit": "it reached its time limit of 50 min",
    "idle": "it had no activity for 50 min",
    "budget": "your GPU-hour budget (20 GPU-hours per week) ran out",
}


@pytest.mark.parametrize("earliest", culling.REASONS)
def test_the_earliest_deadline_decides_when_and_why(earliest):
    after = {"gpu-idle": 4000, "time-limit": 5000, "idle": 6000, "budget": 7000}
    after[earliest] = 3000
    limits = Limits(gpu_idle_timeout=after["gpu-idle"], max_runtime=after["time-limit"], idle_timeout=after["idle"])
    watch = Watch("ada/", T0, limits, ("GPU-a",))
    ends = {"last_activity": T0, "budget_end": BudgetEnd(T0 + after["budget"], BUDGET_TEXT)}
    verdicts = run(watch, {"GPU-a": IDLE}, range(0, 3001, 100), **ends)
    assert {t: v.action for t, v in verdicts.items() if v.action != "none"} == {2700: "warn", 3000: "stop"}
    stop = verdicts[3000].notice
    assert (stop.reason, stop.stop_at, stop.detail) == (earliest, T0 + 3000, DETAILS[earliest])


def test_a_budget_running_out_is_warned_about_and_stops_the_server():
    watch = Watch("ada/", T0, Limits(), ("GPU-a",))
    end = BudgetEnd(T0 + 1800, BUDGET_TEXT)
    verdicts = run(watch, {"GPU-a": BUSY}, range(0, 1801, 60), budget_end=end)
    assert {t: v.action for t, v in verdicts.items() if v.action != "none"} == {1500: "warn", 1800: "stop"}
    assert verdicts[1500].notice.message == (
        "Your GPU-hour budget (20 GPU-hours per week) runs out at Mon 2026-11-02 09:30 UTC (in 5 min);"
        " this server stops then."
    )


def test_a_different_cause_becoming_the_earliest_is_warned_about_anew():
    watch = gpu_watch()
    assert run(watch, {"GPU-a": IDLE}, range(0, 1501, 60))[1500].action == "warn"
    sooner = sample(watch, {"GPU-a": IDLE}, 1560, budget_end=BudgetEnd(T0 + 1700, BUDGET_TEXT))
    assert sooner.action == "warn" and sooner.notice.reason == "budget" and sooner.notice.stop_at == T0 + 1700


def test_a_server_without_limits_or_budget_gets_nothing():
    watch = Watch("ada/", T0, Limits(), ("GPU-a",))
    assert not watch.limits
    assert {v.action for v in run(watch, {"GPU-a": IDLE}, range(0, 86400, 600)).values()} == {"none"}


# Stopping


def test_a_server_being_stopped_is_not_stopped_twice_while_its_stop_may_still_be_under_way():
    watch = gpu_watch()
    stop = run(watch, {"GPU-a": IDLE}, range(0, 1801, 60))[1800]
    later = run(watch, {"GPU-a": IDLE}, range(1860, 1800 + culling.STOP_RETRY_S, 30))
    assert {v.action for v in later.values()} == {"none"}
    assert all(v.notice == stop.notice for v in later.values()) and watch.notice == stop.notice


def test_a_stop_that_left_the_server_running_is_asked_again_once_per_retry_period():
    # The hub took the stop, but the engine failed it: the server still runs and is still watched.
    watch = gpu_watch()
    run(watch, {"GPU-a": IDLE}, range(0, 1801, 60))
    later = run(watch, {"GPU-a": IDLE}, range(1830, 1800 + 3 * culling.STOP_RETRY_S + 1, 30))
    again = [t for t, v in later.items() if v.action == "stop"]
    assert again == [1800 + culling.STOP_RETRY_S, 1800 + 2 * culling.STOP_RETRY_S, 1800 + 3 * culling.STOP_RETRY_S]
    assert all(later[t].notice.reason == "gpu-idle" for t in again)


def test_a_stop_the_hub_did_not_take_is_decided_again_at_the_next_sample():
    watch = gpu_watch()
    assert run(watch, {"GPU-a": IDLE}, range(0, 1801, 60))[1800].action == "stop"
    watch.stopping = False  # what Operations does when the hub refused the stop
    again = sample(watch, {"GPU-a": IDLE}, 1860)
    assert again.action == "stop" and again.notice.stop_at == T0 + 1800
