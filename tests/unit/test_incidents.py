"""Out-of-memory incidents: what a user is told when the kernel kills a process in their server."""

from __future__ import annotations

import asyncio

import pytest

from spawner import incidents
from spawner.incidents import Incidents

from .engine_standin import EngineStandIn
from .test_gpu_service import make_service, settle, start_server

T0 = 1_790_000_000.0  # 2026-09-21 ... UTC


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.mark.parametrize(
    "limit, text",
    [
        (8 * 1024**3, "out of memory: limit 8G"),
        (512 * 1024**2, "out of memory: limit 512M"),
        (1536 * 1024**2, "out of memory: limit 1536M"),
        (1024**3 + 1, "out of memory: limit 1.0G"),
        (0, "out of memory"),
    ],
)
def test_the_message_names_the_limit(limit, text):
    assert incidents.out_of_memory(limit) == text
    message = incidents.oom_message(limit, T0)
    assert message.startswith(text[0].upper() + text[1:]) and "UTC" in message and "kernel" in message


def test_an_incident_is_shown_for_a_while_and_only_for_the_container_it_happened_in():
    clock = Clock()
    seen = Incidents(show_for=600, clock=clock)
    first = seen.oom("ada/", 8 * 1024**3, container="c1")
    assert seen.current("ada/", "c1") == first and seen.current("ada/") == first
    assert "A process in your server" in first.message
    clock.now += 10
    second = seen.oom("ada/", 8 * 1024**3, container="c1")
    assert "2 processes in your server were killed" in second.message and second.at == clock.now
    assert seen.current("bob/") is None
    # A new start (another container) has none of the old one's past.
    assert seen.current("ada/", "c2") is None and seen.current("ada/", "c1") is None
    seen.oom("ada/", 0, container="c2")
    clock.now += 601
    assert seen.current("ada/", "c2") is None


async def test_the_gpu_service_tells_the_server_s_user_about_an_oom_kill_with_its_limit():
    engine = EngineStandIn()
    svc = make_service(engine)
    await svc.ready()
    cid = await start_server(svc, engine, "ada")
    assert engine.watches, "the GPU service watches the engine for OOM kills"
    engine.containers[cid].memory_limit = 8 * 1024**3
    engine.oom(cid)
    await settle()
    await asyncio.sleep(0.05)
    await settle()
    incident = svc.incidents.current("ada/", cid)
    assert incident is not None and incident.message.startswith("Out of memory: limit 8G")
    # The server keeps running and keeps its device: only a process in it was killed.
    assert svc.ledger.lease_of("ada/") is not None
    svc.close()
    assert not engine.watches


@pytest.mark.parametrize(
    "text, epoch",
    [
        ("2026-11-27T10:00:05Z", 1795773605.0),
        ("2026-11-27T10:00:05.5Z", 1795773605.5),
        ("2026-11-27T10:00:05.123456789Z", 1795773605.123456789),
        ("0001-01-01T00:00:00Z", 0.0),
        ("", 0.0),
        ("garbage", 0.0),
    ],
)
def test_engine_times(text, epoch):
    from spawner.engine import engine_time

    assert engine_time(text) == pytest.approx(epoch)


async def test_a_server_that_ended_while_the_hub_was_down_is_told_as_a_host_restart_not_a_crash():
    engine = EngineStandIn()
    svc = make_service(engine)
    await svc.ready()
    cid = await start_server(svc, engine, "ada")
    c = engine.containers[cid]
    c.state, c.finished = "exited", svc.started - 60  # a reboot killed it before this hub started
    assert await svc.poll("ada/", cid) is not None
    reason, at, words = svc.ended["ada/"]
    assert reason == "host-restart" and at == c.finished and "restarted" in words
    assert svc.ledger.lease_of("ada/") is None  # its device is free again
    # One that ends while the hub runs is the server's own doing.
    cid = await start_server(svc, engine, "bob")
    c = engine.containers[cid]
    c.state, c.finished = "exited", svc.started + 5
    await svc.poll("bob/", cid)
    assert svc.ended["bob/"][0] == "user"
