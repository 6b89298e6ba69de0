import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from spawner.allocator import AllocationError, Ledger
from spawner.devices import Device, Request

GPUS = [Device(f"GPU-{i}", model="A100", memory_mib=81920, index=i) for i in range(4)]
MIG = [
    Device(f"MIG-{i}", model="H100", mig_profile="1g.10gb", parent="GPU-m", index=i, parent_index=9) for i in range(3)
]
ONE_GPU = Request(1)
TWO_GPUS = Request(2)
ONE_SLICE = Request(1, mig_profile="1g.10gb")


def ledger():
    return Ledger(GPUS + MIG)


def release(led, owner):
    lease = led.lease_of(owner)
    return led.release(lease.id) if lease else []


def test_a_free_device_is_granted_at_once_by_uuid():
    grant = ledger().request("alice/", ONE_GPU)
    assert grant.devices == ("GPU-0",)


def test_whole_gpu_requests_never_get_mig_slices_and_vice_versa():
    led = ledger()
    assert all(d.startswith("GPU-") for d in led.request("a/", Request(4)).devices)
    assert led.request("b/", ONE_SLICE).devices[0].startswith("MIG-")
    assert led.request("c/", ONE_GPU) is None


def test_a_multi_gpu_request_is_all_or_nothing():
    led = ledger()
    led.request("a/", Request(3))
    assert led.request("b/", TWO_GPUS) is None
    assert len(led.free(ONE_GPU)) == 1  # the one free GPU is not half-given to b


def test_waiting_user_gets_the_device_released_by_another():
    led = ledger()
    led.request("a/", Request(4))
    assert led.request("b/", ONE_GPU) is None
    assert led.position("b/") == (1, 1)
    grants = release(led, "a/")
    assert [(g.owner, len(g.devices)) for g in grants] == [("b/", 1)]


def test_waiters_are_served_first_come_first_served():
    led = ledger()
    led.request("a/", Request(4))
    for name in ("b/", "c/", "d/"):
        assert led.request(name, ONE_GPU) is None
    assert led.position("d/") == (3, 3)
    release(led, "a/")
    assert led.waiting() == []
    assert set(led.holdings) == {"b/", "c/", "d/"}


def test_higher_priority_goes_first():
    led = ledger()
    led.request("a/", Request(3))
    led.request("x/", ONE_GPU)
    led.request("student/", ONE_GPU, priority=0)
    led.request("researcher/", ONE_GPU, priority=10)
    assert led.position("researcher/") == (1, 2)
    assert [g.owner for g in release(led, "x/")] == ["researcher/"]
    assert led.position("student/") == (1, 1)


def test_a_big_request_is_not_starved_by_later_small_ones():
    led = ledger()
    led.request("a/", Request(3))
    assert led.request("big/", TWO_GPUS) is None  # one GPU free: not enough
    assert led.request("small/", ONE_GPU) is None  # may not take big's reserved GPU
    granted = release(led, "a/")
    assert [g.owner for g in granted] == ["big/", "small/"]


def test_other_kinds_are_not_held_up_by_a_blocked_waiter():
    led = ledger()
    led.request("a/", Request(4))
    led.request("b/", ONE_GPU)
    assert led.request("c/", ONE_SLICE) is not None
    assert led.position("b/") == (1, 1)


def test_cancel_leaves_the_queue_and_lets_the_next_one_in():
    led = ledger()
    led.request("a/", Request(3))
    led.request("big/", TWO_GPUS)
    led.request("small/", ONE_GPU)
    granted = led.cancel("big/")
    assert [g.owner for g in granted] == ["small/"]
    assert led.position("big/") is None


def test_a_request_no_host_could_serve_is_refused_not_queued():
    with pytest.raises(AllocationError, match="can never be served: this host has 4"):
        ledger().request("a/", Request(5))
    with pytest.raises(AllocationError, match="0 such"):
        ledger().request("a/", Request(1, mig_profile="3g.40gb"))


def test_asking_again_while_holding_is_refused():
    led = ledger()
    led.request("a/", TWO_GPUS)
    with pytest.raises(AllocationError, match="already holds"):
        led.request("a/", TWO_GPUS)
    assert len(led.free(ONE_GPU)) == 2


def test_multi_gpu_grants_follow_nvml_index_order_not_uuid_order():
    # UUIDs sort the other way round from NVML indices.
    gpus = [Device(f"GPU-{'fedc'[i]}", model="A100", index=i) for i in range(4)]
    led = Ledger(gpus)
    assert led.request("a/", TWO_GPUS).devices == ("GPU-f", "GPU-e")
    assert led.request("b/", TWO_GPUS).devices == ("GPU-d", "GPU-c")


def test_a_bound_lease_ends_only_when_its_container_is_gone():
    led = ledger()
    lease = led.request("a/", ONE_GPU)
    led.bind(lease.id, "c1")
    assert led.gone("c2") == []  # another container's end changes nothing
    assert led.holder["GPU-0"] == lease.id
    led.gone("c1")
    assert "GPU-0" not in led.holder and led.lease_of("a/") is None


def test_a_stale_release_never_ends_a_newer_lease_of_the_same_owner():
    led = ledger()
    old = led.request("olga/", ONE_GPU)
    led.bind(old.id, "old-container")
    led.gone("old-container")
    new = led.request("olga/", ONE_GPU)
    led.bind(new.id, "new-container")
    assert led.gone("old-container") == [] and led.release(old.id) == []
    assert led.lease_of("olga/").id == new.id


def test_adopting_a_container_restores_its_lease():
    led = ledger()
    lease = led.adopt("a/", ("GPU-2",), "c1", "lease-1", "students")
    assert lease.id == "lease-1" and led.holder["GPU-2"] == "lease-1" and led.by_container["c1"] == "lease-1"
    assert led.request("b/", ONE_GPU).devices == ("GPU-0",)


def test_adopt_refuses_held_unknown_and_queued_claims():
    led = ledger()
    led.adopt("a/", ("GPU-2",), "c1")
    with pytest.raises(AllocationError, match="held by"):
        led.adopt("b/", ("GPU-2",), "c2")
    with pytest.raises(AllocationError, match="not in the inventory"):
        led.adopt("c/", ("GPU-gone",), "c3")
    led.request("w/", Request(4))  # waits: only 3 GPUs free
    with pytest.raises(AllocationError, match="already holds or waits"):
        led.adopt("w/", ("GPU-0",), "c4")
    assert led.position("w/") == (1, 1)


def test_quarantined_devices_go_to_nobody_until_lifted():
    led = ledger()
    lease = led.request("a/", ONE_GPU)
    led.block("c-conflict", ["GPU-0", "GPU-1"], "two containers")
    led.release(lease.id)
    assert [d.uuid for d in led.free(ONE_GPU)] == ["GPU-2", "GPU-3"]
    assert led.request("b/", TWO_GPUS).devices == ("GPU-2", "GPU-3")
    assert led.request("c/", ONE_GPU) is None
    assert led.quarantined("GPU-0") == ["two containers"]
    granted = led.lift("c-conflict")
    assert [(g.owner, g.devices) for g in granted] == [("c/", ("GPU-0",))]


def test_a_device_quarantined_twice_stays_out_until_both_are_lifted():
    led = ledger()
    led.block("c1", ["GPU-0"], "a")
    led.block("health:GPU-0", ["GPU-0"], "lost")
    led.lift("c1")
    assert "GPU-0" not in {d.uuid for d in led.free()}
    led.lift("health:GPU-0")
    assert "GPU-0" in {d.uuid for d in led.free()}


def test_a_waiter_that_quarantine_made_unservable_does_not_hold_others_up():
    led = ledger()
    led.request("a/", Request(3))
    assert led.request("big/", TWO_GPUS) is None  # reserves the one free GPU
    assert led.request("small/", ONE_GPU) is None
    led.block("health:GPU-0", ["GPU-0"], "lost")  # now at most 1 GPU could ever be free for big
    led.block("health:GPU-1", ["GPU-1"], "lost")
    led.block("health:GPU-2", ["GPU-2"], "lost")
    assert [g.owner for g in led.dispatch()] == ["small/"]


def test_a_request_larger_than_the_usable_devices_is_refused():
    led = ledger()
    led.block("health:GPU-3", ["GPU-3"], "lost")
    with pytest.raises(AllocationError, match="this host has 3"):
        led.request("a/", Request(4))


def test_a_restored_queue_entry_keeps_its_place_and_lease_id():
    led = ledger()
    led.request("a/", Request(4))
    led.request("late/", ONE_GPU)
    led.request("early/", ONE_GPU, lease_id="L-early", arrival=-5)
    assert led.position("early/") == (1, 2)
    granted = release(led, "a/")
    assert [(g.owner, g.id) for g in granted][:1] == [("early/", "L-early")]


def test_a_waiter_keeps_when_it_joined_through_a_new_priority():
    led = ledger()
    led.request("a/", Request(4))
    led.request("b/", ONE_GPU, since=1234.5)
    led.requeue("b/", 10, "researchers")
    assert led.waiter("b/").since == 1234.5 and led.waiter("b/").priority == 10


def test_blocked_by_names_every_quarantine_of_a_device():
    led = ledger()
    led.block("health:GPU-0", ["GPU-0"], "failed 3 starts in a row")
    led.block("c0ffee", ["GPU-0", "GPU-1"], "container c0ffee: conflict")
    assert led.blocked_by("GPU-0") == {
        "c0ffee": "container c0ffee: conflict",
        "health:GPU-0": "failed 3 starts in a row",
    }
    assert led.blocked_by("GPU-2") == {}
    led.lift("c0ffee")
    assert led.blocked_by("GPU-1") == {} and list(led.blocked_by("GPU-0")) == ["health:GPU-0"]


REQUESTS = st.sampled_from([ONE_GPU, TWO_GPUS, Request(3), ONE_SLICE, Request(2, mig_profile="1g.10gb")])
OWNERS = st.sampled_from([f"u{i}/" for i in range(8)])
DEVICES = st.sampled_from([d.uuid for d in GPUS + MIG])


class LedgerMachine(RuleBasedStateMachine):
    """Random interleavings of request / bind / gone / cancel / quarantine / restart never break the ledger."""

    def __init__(self):
        super().__init__()
        self.led = ledger()
        self.keys = {}  # owner -> (priority, arrival) of its current wait
        self.requests = {}
        self.arrival = 0
        self.containers = 0

    def _check_order(self, granted):
        # Within a kind of device, grants follow queue order: nobody still waiting
        # for the same kind was ahead (higher priority, or same priority and earlier).
        for g in granted:
            req_pools = set(self.led.pools_for(self.requests[g.owner]))
            for w in self.led.waiting():
                if not self.led.satisfiable(w.request):
                    continue  # quarantine made it unservable: it holds nobody up
                if set(self.led.pools_for(w.request)) == req_pools:
                    assert self.keys[w.owner] > self.keys[g.owner], (w.owner, g.owner)

    @rule(owner=OWNERS, request=REQUESTS, priority=st.integers(0, 2))
    def ask(self, owner, request, priority):
        if self.led.lease_of(owner) or self.led.waiter(owner) or not self.led.satisfiable(request):
            return
        self.requests[owner] = request
        self.arrival += 1
        self.keys[owner] = (-priority, self.arrival)
        before = set(self.led.by_owner)
        lease = self.led.request(owner, request, priority)
        self._check_order([self.led.lease_of(o) for o in self.led.by_owner if o not in before and o != owner])
        if lease is not None:
            assert len(lease.devices) == request.count
            assert all(request.accepts(self.led.devices[u]) for u in lease.devices)

    @rule(owner=OWNERS)
    def container_created(self, owner):
        lease = self.led.lease_of(owner)
        if lease and lease.container is None:
            self.containers += 1
            self.led.bind(lease.id, f"c{self.containers}")

    @rule(owner=OWNERS)
    def container_gone(self, owner):
        lease = self.led.lease_of(owner)
        if lease and lease.container:
            self._check_order(self.led.gone(lease.container))

    @rule(owner=OWNERS)
    def cancel(self, owner):
        self._check_order(self.led.cancel(owner))

    @rule(key=st.sampled_from(["q1", "q2"]), devices=st.lists(DEVICES, max_size=3))
    def quarantine(self, key, devices):
        self.led.block(key, devices, "test")

    @rule(key=st.sampled_from(["q1", "q2"]))
    def lift(self, key):
        self._check_order(self.led.lift(key))

    @precondition(lambda self: any(lease.container for lease in self.led.leases.values()))
    @rule()
    def hub_restarts(self):
        bound = [lease for lease in self.led.leases.values() if lease.container]
        waiting = self.led.waiting()
        quarantine = dict(self.led.quarantine)
        fresh = ledger()
        for key, (devices, reason) in quarantine.items():
            fresh.block(key, devices, reason)
        for lease in bound:
            fresh.adopt(lease.owner, lease.devices, lease.container, lease.id)
        for w in waiting:  # the saved queue, in its old order
            if fresh.satisfiable(w.request):
                fresh.request(w.owner, w.request, w.priority, w.charged_to, w.lease_id, w.arrival)
        assert {lease.id: lease.devices for lease in bound} == {
            i: x.devices for i, x in fresh.leases.items() if x.container
        }
        self.led = fresh

    @invariant()
    def no_device_is_held_twice_or_while_quarantined(self):
        seen = [u for lease in self.led.leases.values() for u in lease.devices]
        assert len(seen) == len(set(seen))
        assert {u: lease.id for lease in self.led.leases.values() for u in lease.devices} == self.led.holder

    @invariant()
    def free_held_and_quarantined_partition_the_inventory(self):
        free = {d.uuid for d in self.led.free()}
        blocked = {u for devices, _ in self.led.quarantine.values() for u in devices}
        assert free.isdisjoint(self.led.holder) and free.isdisjoint(blocked)
        assert free | set(self.led.holder) | (blocked & set(self.led.devices)) == set(self.led.devices)

    @invariant()
    def usable_counts_every_device_not_quarantined(self):
        for request in (ONE_GPU, ONE_SLICE):
            expected = sum(
                1 for d in self.led.devices.values() if request.accepts(d) and not self.led.quarantined(d.uuid)
            )
            assert self.led.usable(request) == expected

    @invariant()
    def nobody_waits_while_holding(self):
        assert not {w.owner for w in self.led.waiting()} & set(self.led.by_owner)

    def teardown(self):
        for key in list(self.led.quarantine):
            self.led.lift(key)
        while self.led.leases or self.led.waiting():
            for lease in list(self.led.leases.values()):
                self.led.release(lease.id)
            for w in self.led.waiting():
                self.led.cancel(w.owner)
        assert len(self.led.free()) == len(self.led.devices), "devices leaked"


LedgerMachine.TestCase.settings = hsettings(max_examples=300, stateful_step_count=40, deadline=None)
test_ledger_state_machine = LedgerMachine.TestCase


def test_grants_a_request_makes_for_other_waiters_are_handed_over_not_lost():
    led = Ledger(GPUS[:2])
    led.block("health:GPU-0", ["GPU-0"], "lost")
    assert led.request("carol/", ONE_GPU) is not None  # takes GPU-1
    assert led.request("alice/", ONE_GPU) is None  # waits: GPU-0 is quarantined
    led.lift_quietly("health:GPU-0")  # frees it without a dispatch
    assert led.request("bob/", ONE_GPU) is None  # bob queues behind alice ...
    (aside,) = led.granted_aside()  # ... and his request granted alice's lease on the way
    assert aside.owner == "alice/" and aside.devices == ("GPU-0",)
    assert led.granted_aside() == []  # told once
