"""Lab admins' actions on the GPU service: removing a waiter, lifting a quarantine, the queue's join times.

The real `GPUService` and `Ledger` with the in-memory engine stand-in, as in test_gpu_service.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from spawner.engine import EngineError
from spawner.gpu_service import HEALTH, LiftRefused, RemovedFromQueue

from .engine_standin import EngineStandIn
from .test_gpu_service import GPUS, admit_for, holders, make_service, settle, start_server


@pytest.fixture
def engine():
    return EngineStandIn()


async def fail_starts(svc, engine, n):
    """`n` starts whose `docker start` fails in a way that blames the device (what the spawner marks)."""
    for _ in range(n):
        engine.fail("start")
        ticket = svc.reserve("u/", "u", admit_for("u"))
        with pytest.raises(EngineError):
            async with svc.starting(ticket):
                lease = await svc.wait(ticket, 1)
                cid = await engine.create("u", "", lease.devices, ticket.lease_id)
                svc.bind(ticket, cid)
                try:
                    await engine.start(cid)
                except EngineError:
                    ticket.device_failure = True
                    raise


async def test_a_waiter_removed_by_a_lab_admin_fails_its_start_and_the_next_moves_up(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    holder = await start_server(svc, engine, "holder")
    first = asyncio.ensure_future(start_server(svc, engine, "first", timeout=30))
    await settle()
    second = asyncio.ensure_future(start_server(svc, engine, "second", timeout=30))
    await settle()
    assert svc.position("second/") == (2, 2)

    removed = svc.remove_waiter("first/")
    assert removed is not None and removed.owner == "first/"
    with pytest.raises(RemovedFromQueue, match="removed from the GPU queue by a lab admin"):
        await first
    assert svc.position("second/") == (1, 1) and svc.ledger.waiter("first/") is None
    await svc.stop("holder/", holder, 10)
    await settle()
    assert await asyncio.wait_for(second, 5) and holders(svc) == {"GPU-0": "second/"}


async def test_removing_someone_who_does_not_wait_changes_nothing(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    await start_server(svc, engine, "holder")
    assert svc.remove_waiter("holder/") is None and svc.remove_waiter("nobody/") is None
    assert holders(svc) == {"GPU-0": "holder/"}


async def test_a_device_that_failed_its_starts_is_lifted_and_goes_to_the_next_waiter(engine):
    svc = make_service(engine, devices=GPUS[:2])
    await svc.ready()
    await fail_starts(svc, engine, 3)
    assert svc.ledger.quarantined("GPU-0") == ["failed 3 starts in a row"] and svc.liftable("GPU-0")
    await start_server(svc, engine, "holder")  # takes GPU-1: the next start must wait
    waiting = asyncio.ensure_future(start_server(svc, engine, "v", timeout=30))
    await settle()
    assert not waiting.done()

    assert svc.lift("GPU-0") == ["failed 3 starts in a row"]
    assert await asyncio.wait_for(waiting, 5) and holders(svc) == {"GPU-0": "v/", "GPU-1": "holder/"}
    assert not svc.ledger.quarantined("GPU-0") and not svc.liftable("GPU-0")


async def test_a_lifted_device_needs_as_many_failures_again_before_it_is_quarantined(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    await fail_starts(svc, engine, 3)
    svc.lift("GPU-0")
    await fail_starts(svc, engine, 2)
    assert not svc.ledger.quarantined("GPU-0")


async def test_quarantines_that_lift_themselves_or_none_at_all_cannot_be_lifted_by_hand(engine):
    svc = make_service(engine, devices=GPUS[:3])
    await svc.ready()
    svc.ledger.block(HEALTH + "GPU-0", ["GPU-0"], "nvmlDeviceGetHandleByUUID: GPU is lost")
    svc.ledger.block("c0ffee", ["GPU-1"], "container c0ffee of x/: uses GPU-1 beyond its lease")
    for uuid, words in (("GPU-0", "GPU is lost"), ("GPU-1", "beyond its lease"), ("GPU-2", "not quarantined")):
        assert not svc.liftable(uuid)
        with pytest.raises(LiftRefused, match=words):
            svc.lift(uuid)
    assert svc.ledger.quarantined("GPU-0") and svc.ledger.quarantined("GPU-1")


async def test_a_device_also_held_by_an_unknown_container_stays_out_after_its_failures_are_lifted(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    await fail_starts(svc, engine, 3)
    svc.ledger.block("c0ffee", ["GPU-0"], "container c0ffee of x/: uses GPU-0 beyond its lease")
    assert not svc.liftable("GPU-0")
    with pytest.raises(LiftRefused, match="c0ffee"):
        svc.lift("GPU-0")
    assert len(svc.ledger.quarantined("GPU-0")) == 2


async def test_when_each_waiter_joined_survives_a_hub_restart(engine, tmp_path):
    queue_file = str(tmp_path / "queue.json")
    svc = make_service(engine, devices=GPUS[:1], queue_file=queue_file)
    await svc.ready()
    await start_server(svc, engine, "holder")
    before = time.time()
    waiting = asyncio.ensure_future(start_server(svc, engine, "first", timeout=30))
    await settle()
    joined = svc.ledger.waiter("first/").since
    assert before <= joined <= time.time()
    await asyncio.sleep(0.5)  # written in the background
    assert json.load(open(queue_file))["queue"][0]["since"] == joined
    svc.close()
    waiting.cancel()

    restarted = make_service(engine, devices=GPUS[:1], queue_file=queue_file)
    await restarted.ready()
    assert restarted.ledger.waiter("first/").since == joined
    again = asyncio.ensure_future(start_server(restarted, engine, "first", timeout=30))
    await settle()
    assert restarted.ledger.waiter("first/").since == joined  # resuming keeps the place and the time
    restarted.remove_waiter("first/")
    with pytest.raises(RemovedFromQueue):
        await again
