"""How often the spawner checks that a starting server answers (ready_poll_wait)."""

import itertools

import pytest

from spawner.spawner import GPUDockerSpawner, ready_poll_wait

FIRST = GPUDockerSpawner.ready_poll_interval.default_value
MOST = GPUDockerSpawner.ready_poll_max_interval.default_value


def checks(answers_at: float, first: float = FIRST, most: float = MOST) -> list[float]:
    """The times the spawner checks a server that starts answering `answers_at` s into its start."""
    t, times = 0.0, []
    while True:
        times.append(t)
        if t >= answers_at:
            return times
        t += ready_poll_wait(t, first, most)


def test_an_ordinary_start_is_checked_at_the_short_interval():
    times = checks(4.0)  # the first 4 s: a server on an idle host answers in 2 to 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) == pytest.approx(FIRST)
    assert times[-1] - 4.0 <= FIRST + 1e-9


@pytest.mark.parametrize("answers_at", [0.5, 3.9, 7.3, 22.4, 41.0, 95.2, 252.4, 299.9])
def test_a_server_is_let_in_at_most_5_percent_or_the_longest_wait_after_it_answers(answers_at):
    late = checks(answers_at)[-1] - answers_at
    assert late <= max(FIRST, min(MOST, answers_at * 0.05 * 1.06)) + 1e-9


def test_a_class_starting_for_minutes_costs_the_hub_a_seventh_of_the_checks():
    # The class load run: servers ready after ~250 s on a 2-core host.
    backed_off, fixed = len(checks(250)), len(checks(250, most=FIRST))
    assert 1250 <= fixed <= 1252  # every 0.2 s for 250 s
    assert backed_off < fixed / 7, (backed_off, fixed)


def test_the_wait_never_exceeds_the_longest_nor_goes_below_the_first():
    for waited in (0, 1, 4, 10, 39.9, 40, 41, 1e6):
        assert FIRST <= ready_poll_wait(waited, FIRST, MOST) <= MOST
    # A longest wait set below the first interval wins: the admin asked for no longer waits.
    assert ready_poll_wait(100, 1.0, 0.5) == 0.5
