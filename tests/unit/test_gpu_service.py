"""The GPU service under concurrency and engine faults, deterministically.

Each test replays one interleaving from the allocation review
(../shared/reviews/allocation-review.md, findings 1-9, 12, 13, 15) on the real
`GPUService`, `Ledger` and admission code, with an in-memory engine whose calls
can be held or failed. Verdicts come from the engine's side: which running
containers had which device (`engine.shared` must stay empty), not the ledger.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from spawner import admission, profiles
from spawner.container import LABEL_USER
from spawner.devices import Device
from spawner.engine import EngineError
from spawner.gpu_service import GPUService, ServiceBusy, ServiceConfig, owner_key
from spawner.inventory import Inventory

from .engine_standin import EngineStandIn

GPUS = tuple(Device(f"GPU-{i}", model="A100", index=i) for i in range(4))
PROFILES = profiles.parse(
    [
        {"slug": "cpu", "display_name": "CPU", "default": True},
        {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}},
        {"slug": "gpu2", "display_name": "2 GPUs", "gpu": {"count": 2}},
    ]
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_service(engine, devices=GPUS, clock=None, **config):
    config.setdefault("reconcile_interval", 0)
    svc = GPUService(
        ServiceConfig(hub_id="hub", **config),
        engine,
        lambda: Inventory(tuple(devices), "static"),
        log=logging.getLogger("test-gpuhub"),
        clock=clock or Clock(),
    )
    return svc


def admit_for(user, profile="gpu", quota_default=None, groups=None, config_groups=None, usable=None):
    def admit(usage):
        return admission.admit(
            username=user,
            user_options={"profile": profile},
            profile_list=PROFILES,
            default_image="img",
            home_path="/home/jovyan",
            quota_default=quota_default or {},
            quota_groups=config_groups or {},
            user_groups=groups or {},
            usage=usage,
            usable=usable or (lambda request: 99),
        )

    return admit


async def start_server(svc, engine, user, server="", profile="gpu", timeout=5, **admit_kwargs):
    """What GPUDockerSpawner.start does, in its order, with the engine stand-in doing dockerspawner's part."""
    owner = owner_key(user, server)
    await svc.clear_previous(owner, user, server)
    ticket = svc.reserve(owner, user, admit_for(user, profile, **admit_kwargs))
    if isinstance(ticket, admission.Refusal):
        return ticket
    async with svc.starting(ticket):
        lease = await svc.wait(ticket, timeout)
        devices = lease.devices if lease else ()
        cid = await engine.create(user, server, devices, ticket.lease_id or "")
        svc.bind(ticket, cid)
        await engine.start(cid)
    return cid


def holders(svc):
    return {d: svc.ledger.leases[lid].owner for d, lid in svc.ledger.holder.items()}


@pytest.fixture
def engine():
    return EngineStandIn()


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)


# --- finding 1: reconcile against a stale snapshot -------------------------------------------------
async def test_a_stop_and_restart_during_a_reconcile_pass_keeps_the_new_lease(engine):
    svc = make_service(engine)
    await svc.ready()
    old = await start_server(svc, engine, "olga")
    gate = engine.hold("list")
    reconcile = asyncio.ensure_future(svc.reconcile())
    await gate.reached.wait()  # the pass has its snapshot: olga's old container runs on GPU-0
    await svc.stop("olga/", old, 10)
    new = await start_server(svc, engine, "olga")
    gate.open()
    await reconcile
    assert svc.ledger.lease_of("olga/").container == new and holders(svc) == {"GPU-0": "olga/"}
    await start_server(svc, engine, "walt")
    assert engine.running_on("GPU-0") == [new] and engine.shared == []


async def test_a_stale_snapshot_never_swaps_a_new_lease_for_the_old_container(engine):
    svc = make_service(engine)
    await svc.ready()
    await start_server(svc, engine, "anna")  # GPU-0
    old = await start_server(svc, engine, "olga")  # GPU-1
    gate = engine.hold("list")
    reconcile = asyncio.ensure_future(svc.reconcile())
    await gate.reached.wait()
    await svc.stop("anna/", engine.running_on("GPU-0")[0], 10)
    await svc.stop("olga/", old, 10)
    new = await start_server(svc, engine, "olga")  # now GPU-0
    gate.open()
    await reconcile
    assert svc.ledger.lease_of("olga/").devices == ("GPU-0",)
    await start_server(svc, engine, "walt")
    await start_server(svc, engine, "xena")
    assert engine.running_on("GPU-0") == [new] and engine.shared == []


# --- finding 2: a start cancelled during `docker start` -------------------------------------------
async def test_a_start_cancelled_during_docker_start_removes_its_container_before_the_device_goes_back(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    gate = engine.hold("start")
    alice = asyncio.ensure_future(start_server(svc, engine, "alice"))
    await gate.reached.wait()
    alice.cancel()  # start_timeout, or DELETE on the pending server
    await settle()
    assert alice.cancelled() and engine.containers == {}  # force-removed before the GPU went back
    bob = await start_server(svc, engine, "bob", timeout=5)
    gate.open()  # the held `docker start` reaches the engine late, and finds no container
    await settle()
    assert engine.shared == [] and engine.running_on("GPU-0") == [bob]
    assert all(c.labels[LABEL_USER] == "bob" for c in engine.containers.values())


async def test_a_cancelled_start_ends_at_once_while_its_slow_undo_keeps_the_device_held(engine):
    """JupyterHub waits 1 s after cancelling a pending start, then stops the server; the undo
    (docker rm) may take longer. The start must end at once, the device stay held until the
    engine confirms the container gone, and the stop wait for the undo."""
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    gate = engine.hold("start")
    alice = asyncio.ensure_future(start_server(svc, engine, "alice"))
    await gate.reached.wait()
    removal = engine.hold("remove")
    alice.cancel()
    await settle()
    assert alice.cancelled(), "the cancelled start is still running: JupyterHub's DELETE would fail"
    await removal.reached.wait()
    assert holders(svc) == {"GPU-0": "alice/"} and engine.containers  # removal not confirmed yet
    refused = svc.reserve("alice/", "alice", admit_for("alice"))
    assert isinstance(refused, admission.Refusal) and refused.status == 409
    waiting = asyncio.ensure_future(svc.stop("alice/", "", timeout=1))
    await settle()
    assert not waiting.done()  # the stop waits for the undo
    removal.open()
    await asyncio.wait_for(waiting, 5)
    assert engine.containers == {} and holders(svc) == {}
    gate.open()
    bob = await start_server(svc, engine, "bob", timeout=5)
    assert engine.shared == [] and engine.running_on("GPU-0") == [bob]


async def test_a_start_whose_container_cannot_be_removed_keeps_its_devices(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    gate = engine.hold("start")
    alice = asyncio.ensure_future(start_server(svc, engine, "alice"))
    await gate.reached.wait()
    engine.fail("remove")
    alice.cancel()
    await settle()
    assert holders(svc) == {"GPU-0": "alice/"}
    assert await _refused_or_waits(svc, engine, "bob") == "waited"
    gate.open()
    await settle()
    assert engine.shared == []


async def _refused_or_waits(svc, engine, user):
    try:
        await start_server(svc, engine, user, timeout=0.2)
    except asyncio.TimeoutError:
        return "waited"
    return "started"


# --- finding 3: poll() on an engine error ------------------------------------------------------------
async def test_poll_reports_a_running_server_and_keeps_its_devices_when_the_engine_answers_500(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    cid = await start_server(svc, engine, "alice")
    engine.fail("inspect", times=3)
    assert [await svc.poll("alice/", cid) for _ in range(3)] == [None, None, None]
    assert await _refused_or_waits(svc, engine, "bob") == "waited"
    assert engine.shared == [] and holders(svc) == {"GPU-0": "alice/"}


async def test_poll_frees_devices_only_once_the_engine_says_the_container_is_gone(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    cid = await start_server(svc, engine, "alice")
    engine.containers[cid].state = "exited"  # the notebook server died
    assert await svc.poll("alice/", cid) == 0
    assert cid not in engine.containers and holders(svc) == {}
    assert await svc.poll("alice/", cid) == 0  # 404: nothing left to do


# --- finding 4: start again after a failed stop --------------------------------------------------
async def test_starting_again_after_a_failed_stop_removes_the_old_container_first(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    old = await start_server(svc, engine, "alice")
    engine.fail("stop")
    with pytest.raises(EngineError):
        await svc.stop("alice/", old, 10)
    assert holders(svc) == {"GPU-0": "alice/"}
    assert await _refused_or_waits(svc, engine, "bob") == "waited"
    new = await start_server(svc, engine, "alice")
    assert old not in engine.containers and engine.running_on("GPU-0") == [new] and engine.shared == []


async def test_starting_again_is_refused_while_the_old_container_cannot_be_removed(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    old = await start_server(svc, engine, "alice")
    engine.fail("stop")
    engine.fail("remove")
    with pytest.raises(EngineError):
        await svc.stop("alice/", old, 10)
    with pytest.raises(ServiceBusy, match="still stopping"):
        await start_server(svc, engine, "alice")
    assert engine.running_on("GPU-0") == [old] and holders(svc) == {"GPU-0": "alice/"}


# --- finding 5: quota decision and claim in one step -------------------------------------------------
async def test_parallel_starts_of_named_servers_cannot_pass_the_per_user_limit(engine):
    svc = make_service(engine)
    await svc.ready()
    limit = {"max_devices_per_user": 1}
    tickets = [svc.reserve(f"amy/s{i}", "amy", admit_for("amy", quota_default=limit)) for i in range(8)]
    granted = [t for t in tickets if not isinstance(t, admission.Refusal)]
    refused = [t for t in tickets if isinstance(t, admission.Refusal)]
    assert len(granted) == 1 and len(refused) == 7
    assert all(r.status == 403 and "your limit is 1" in r.message for r in refused)


async def test_parallel_users_cannot_pass_a_group_limit(engine):
    svc = make_service(engine)
    await svc.ready()
    quota = {"students": {"profiles": "*", "max_devices_per_group": 2}}
    results = [
        svc.reserve(
            f"u{i}/",
            f"u{i}",
            admit_for(f"u{i}", quota_default={"profiles": ["cpu"]}, config_groups=quota, groups={"students": {}}),
        )
        for i in range(8)
    ]
    assert sum(not isinstance(r, admission.Refusal) for r in results) == 2
    assert svc.usage("nobody").by_quota == {"students": 2}


# --- finding 6: partial holdings at rebuild ------------------------------------------------------------
async def test_a_container_with_a_device_missing_from_the_inventory_keeps_its_other_devices_out(engine):
    engine.add("ron", "", ["GPU-gone", "GPU-1"])
    svc = make_service(engine)
    await svc.ready()
    assert svc.ledger.quarantined("GPU-1")
    for user in ("a", "b", "c"):
        await start_server(svc, engine, user)
    assert engine.shared == [] and "GPU-1" not in holders(svc)


# --- finding 7: a container of a queued owner --------------------------------------------------------
async def test_a_container_of_a_queued_owner_is_quarantined_not_adopted(engine):
    svc = make_service(engine, devices=GPUS[:2])
    await svc.ready()
    await start_server(svc, engine, "x")
    alice = asyncio.ensure_future(start_server(svc, engine, "alice", timeout=5))
    await settle()
    assert svc.position("alice/") is None  # she got GPU-1 at once; now make her wait
    await alice
    await svc.stop("alice/", engine.running_on("GPU-1")[0], 10)
    await start_server(svc, engine, "y")
    alice = asyncio.ensure_future(start_server(svc, engine, "alice", timeout=5))
    await settle()
    assert svc.position("alice/") == (1, 1)
    orphan = engine.add("alice", "", ["GPU-0"], state="running")  # an old container of hers, on x's GPU
    await svc.reconcile()
    assert svc.position("alice/") == (1, 1) and svc.ledger.lease_of("alice/") is None
    assert orphan in svc.ledger.quarantine and svc.ledger.quarantined("GPU-0")
    await svc.stop("y/", engine.running_on("GPU-1")[0], 10)
    await alice
    assert svc.ledger.lease_of("alice/").devices == ("GPU-1",)


async def test_a_container_removed_during_a_reconcile_pass_is_not_taken_for_an_unknown_one(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    old = await start_server(svc, engine, "alice")
    gate = engine.hold("list")
    reconcile = asyncio.ensure_future(svc.reconcile())
    await gate.reached.wait()  # the snapshot still shows alice's container on GPU-0
    await svc.stop("alice/", old, 10)
    await start_server(svc, engine, "bob")
    gate.open()
    await reconcile
    assert not svc.ledger.quarantined("GPU-0") and holders(svc) == {"GPU-0": "bob/"}


# --- finding 8: conflicts and orphans are resolved ---------------------------------------------------
async def test_two_containers_on_one_device_are_logged_counted_quarantined_and_the_orphan_removed(engine, caplog):
    clock = Clock()
    first = engine.add("a", "", ["GPU-0"])
    second = engine.add("b", "", ["GPU-0", "GPU-1"])
    svc = make_service(engine, clock=clock, orphan_grace=300)
    with caplog.at_level(logging.ERROR, "test-gpuhub"):
        await svc.ready()
    assert any(first[:12] in r.message and second[:12] in r.message for r in caplog.records)
    assert holders(svc) == {"GPU-0": "a/"} and svc.ledger.quarantined("GPU-1")
    svc.claim(first)  # a's server polls: it is JupyterHub's
    clock.now += 301
    svc.claim(first)
    await svc.reconcile()
    await settle()
    assert second not in engine.containers and first in engine.containers
    assert not svc.ledger.quarantined("GPU-1") and not svc.ledger.quarantined("GPU-0")
    assert holders(svc) == {"GPU-0": "a/"}


async def test_an_unclaimed_container_is_kept_until_the_grace_period_ends(engine):
    clock = Clock()
    orphan = engine.add("z", "", ["GPU-2"])
    svc = make_service(engine, clock=clock, orphan_grace=300)
    await svc.ready()
    clock.now += 299
    await svc.reconcile()
    await settle()
    assert orphan in engine.containers and holders(svc) == {"GPU-2": "z/"}
    clock.now += 2
    await svc.reconcile()
    await settle()
    assert orphan not in engine.containers and holders(svc) == {}


# --- finding 9: inventory health -------------------------------------------------------------------
async def test_a_gpu_lost_from_nvml_is_quarantined_until_it_returns(engine):
    present = list(GPUS)
    svc = GPUService(
        ServiceConfig(hub_id="hub", reconcile_interval=0),
        engine,
        lambda: Inventory(tuple(present), "nvml"),
        log=logging.getLogger("test-gpuhub"),
    )
    await svc.ready()
    present.pop(0)
    await svc.rediscover()
    assert [d.uuid for d in svc.ledger.free()] == ["GPU-1", "GPU-2", "GPU-3"]
    assert svc.ledger.quarantined("GPU-0") == ["lost: NVML no longer lists it"]
    present.insert(0, GPUS[0])
    await svc.rediscover()
    assert [d.uuid for d in svc.ledger.free()] == ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]


async def test_a_gpu_that_fails_three_starts_in_a_row_is_quarantined(engine):
    svc = make_service(engine, devices=GPUS[:2])
    await svc.ready()
    for _ in range(3):
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
    assert svc.ledger.quarantined("GPU-0") == ["failed 3 starts in a row"]
    assert (await start_server(svc, engine, "v")) and holders(svc) == {"GPU-1": "v/"}


async def test_a_profile_the_host_cannot_serve_any_more_is_refused_with_a_reason(engine):
    svc = make_service(engine, devices=GPUS[:2])
    await svc.ready()
    svc.ledger.block("health:GPU-1", ["GPU-1"], "lost")
    refusal = svc.reserve("u/", "u", admit_for("u", profile="gpu2", usable=svc.usable))
    assert refusal.status == 503 and "asks for 2 x GPU but this host has 1" in refusal.message


# --- finding 12: the queue survives a hub restart -------------------------------------------------
async def test_the_queue_survives_a_hub_restart_in_order_and_a_returning_student_keeps_her_place(engine, tmp_path):
    queue_file = str(tmp_path / "queue.json")
    svc = make_service(engine, devices=GPUS[:1], queue_file=queue_file)
    await svc.ready()
    holder = await start_server(svc, engine, "holder")
    first = asyncio.ensure_future(start_server(svc, engine, "first", timeout=30))
    await settle()
    second = asyncio.ensure_future(start_server(svc, engine, "second", timeout=30))
    await settle()
    await asyncio.sleep(0.5)  # the service saves the queue in the background, a few times a second at most
    assert [e["owner"] for e in json.load(open(queue_file))["queue"]] == ["first/", "second/"]
    svc.close()  # the hub process dies: nothing more is written, its tasks go with it
    first.cancel(), second.cancel()

    restarted = make_service(engine, devices=GPUS[:1], queue_file=queue_file)
    await restarted.ready()
    assert restarted.position("second/") == (2, 2)
    again = asyncio.ensure_future(start_server(restarted, engine, "second", timeout=30))
    await settle()
    assert restarted.position("second/") == (2, 2)  # kept her place behind "first"
    await restarted.stop("holder/", holder, 10)
    await settle()
    assert holders(restarted) == {"GPU-0": "first/"} and not again.done()


# --- finding 13: priority of the charged quota ---------------------------------------------------------
async def test_a_user_charged_to_another_group_queues_at_that_groups_priority(engine):
    svc = make_service(engine)
    await svc.ready()
    groups = {"researchers": {}, "students": {}}
    quota = {
        "researchers": {"profiles": "*", "max_devices_per_group": 0, "priority": 10},
        "students": {"profiles": "*", "priority": 0},
    }
    ticket = svc.reserve("r/", "r", admit_for("r", config_groups=quota, groups=groups))
    assert ticket.plan.charged_to == "students" and ticket.plan.priority == 0


# --- finding 15: a start in flight when the hub was killed ---------------------------------------------
async def test_a_created_container_with_devices_holds_them_at_rebuild(engine):
    created = engine.add("k", "", ["GPU-0"], state="created")
    svc = make_service(engine)
    await svc.ready()
    assert svc.ledger.by_container.get(created)
    await start_server(svc, engine, "n")
    await engine.start(created)  # the killed hub's `docker start` lands now
    assert engine.shared == []


async def test_a_slow_start_is_not_mistaken_for_an_orphan(engine):
    clock = Clock()
    svc = make_service(engine, clock=clock, orphan_grace=300)
    await svc.ready()
    gate = engine.hold("start")
    slow = asyncio.ensure_future(start_server(svc, engine, "slow"))
    await gate.reached.wait()
    await svc.reconcile()  # its container is listed
    clock.now += 1000  # no poll reaches a server that is still starting
    await svc.reconcile()
    await settle()
    assert len(engine.containers) == 1
    gate.open()
    await slow
    assert engine.running_on("GPU-0")


async def test_a_restored_queue_place_is_charged_where_admission_puts_it_now(engine, tmp_path):
    queue_file = str(tmp_path / "queue.json")
    svc = make_service(engine, devices=GPUS[:1], queue_file=queue_file)
    await svc.ready()
    holder = await start_server(svc, engine, "holder")
    waiting = asyncio.ensure_future(start_server(svc, engine, "amy", timeout=30))
    await asyncio.sleep(0.5)
    assert svc.ledger.waiter("amy/").charged_to == "(default)"
    svc.close()
    waiting.cancel()
    restarted = make_service(engine, devices=GPUS[:1], queue_file=queue_file)
    await restarted.ready()
    quota = {"students": {"profiles": "*", "priority": 5}}
    again = asyncio.ensure_future(
        start_server(restarted, engine, "amy", timeout=30, config_groups=quota, groups={"students": {}})
    )
    await settle()
    waiter = restarted.ledger.waiter("amy/")
    assert (waiter.charged_to, waiter.priority) == ("students", 5)
    await restarted.stop("holder/", holder, 10)
    await again
    assert restarted.ledger.lease_of("amy/").charged_to == "students"


async def test_nvml_failing_as_a_whole_keeps_the_last_inventory(engine):
    answers = [Inventory(GPUS, "nvml"), Inventory((), "none", "NVML unavailable (Driver/library version mismatch)")]
    svc = GPUService(
        ServiceConfig(hub_id="hub", reconcile_interval=0), engine, lambda: answers.pop(0), log=logging.getLogger("t")
    )
    await svc.ready()
    await svc.rediscover()
    assert len(svc.ledger.free()) == 4 and not svc.ledger.quarantine


async def test_at_rebuild_a_running_container_wins_a_conflict_over_an_older_created_one(engine):
    late = engine.add("ghost", "", ["GPU-0"], state="created")  # a create that landed after its start was cancelled
    running = engine.add("bob", "", ["GPU-0"])
    svc = make_service(engine)
    await svc.ready()
    assert svc.ledger.lease_of("bob/").container == running and late in svc.ledger.quarantine
    assert svc.usage("bob").user == 1


async def test_a_lease_whose_start_ended_without_a_container_is_released(engine):
    svc = make_service(engine, devices=GPUS[:1])
    await svc.ready()
    ticket = svc.reserve("u/", "u", admit_for("u"))
    engine.fail("list")
    with pytest.raises(RuntimeError):
        async with svc.starting(ticket):
            await svc.wait(ticket, 1)
            raise RuntimeError("the image could not be pulled")
    assert holders(svc) == {}
