"""How often the spawner checks that a starting server answers (ready_poll_wait)."""

import itertools

import pytest

from spawner import spawner as spawner_module
from spawner.spawner import GPUDockerSpawner, ready_poll_wait

from .test_home_size import User

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
    assert late <= max(FIRST, min(MOST, answers_at * 0.05)) + 1e-9


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


class Clock:
    """time.monotonic and asyncio.sleep for the spawner's readiness loop: sleeping moves the clock."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def monotonic(self):
        return self.now

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class NoAnswer:
    """Tornado's client as it finds a server that does not listen yet: every fetch is a 599."""

    def __init__(self, clock, answers_after):
        self.clock, self.answers_after, self.fetched = clock, answers_after, []

    async def fetch(self, request, raise_error):
        self.fetched.append(self.clock.now)
        return type("Response", (), {"code": 200 if self.clock.now - 1000 >= self.answers_after else 599})()


class RunningContainer:
    """DockerSpawner.docker for the state checks: the container is running; each check is recorded."""

    def __init__(self, clock):
        self.clock, self.inspected = clock, []

    async def __call__(self, method, *args, **kwargs):
        assert method == "inspect_container"
        self.inspected.append(self.clock.now)
        return {"State": {"Running": True}}


async def test_the_spawner_backs_off_and_still_checks_the_container_every_2_seconds(monkeypatch):
    clock = Clock()
    client = NoAnswer(clock, answers_after=120)
    monkeypatch.setattr(spawner_module, "time", clock)
    monkeypatch.setattr(spawner_module.asyncio, "sleep", clock.sleep)
    monkeypatch.setattr(spawner_module, "AsyncHTTPClient", lambda: client)
    s = GPUDockerSpawner(user=User(), start_timeout=300)
    s.docker = RunningContainer(clock)
    s.object_id = "c1"

    await s._wait_until_answering("10.0.0.5", 8888)

    assert 120 <= clock.now - 1000 <= 120 + 0.05 * 120
    assert len(client.fetched) < 140  # every 0.2 s it would have been 600
    assert max(clock.sleeps) == pytest.approx(MOST)
    assert clock.sleeps[:20] == [pytest.approx(FIRST)] * 20
    gaps = [b - a for a, b in itertools.pairwise(s.docker.inspected)]
    assert len(s.docker.inspected) >= 55 and max(gaps) <= 2 + MOST / 2


async def test_a_container_that_exits_late_in_a_slow_start_is_noticed_within_2_seconds(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(spawner_module, "time", clock)
    monkeypatch.setattr(spawner_module.asyncio, "sleep", clock.sleep)
    monkeypatch.setattr(spawner_module, "AsyncHTTPClient", lambda: NoAnswer(clock, answers_after=1e9))
    s = GPUDockerSpawner(user=User(), start_timeout=300, ready_poll_max_interval=30)

    async def docker(method, *args, **kwargs):
        if method == "logs":
            return b"Killed\n"
        running = clock.now - 1000 < 100  # the server dies 100 s into its start
        return {"State": {"Running": running, "ExitCode": 137}}

    s.docker = docker
    s.object_id = "c1"
    with pytest.raises(spawner_module.web.HTTPError, match="exited with code 137 while starting: Killed"):
        await s._wait_until_answering("10.0.0.5", 8888)
    assert 100 <= clock.now - 1000 <= 102
