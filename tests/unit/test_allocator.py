import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from spawner.allocator import AllocationError, Ledger
from spawner.devices import Device, Request

GPUS = [Device(f"GPU-{i}", model="A100", memory_mib=81920, index=i) for i in range(4)]
MIG = [Device(f"MIG-{i}", model="H100", mig_profile="1g.10gb", parent="GPU-m", index=i) for i in range(3)]
ONE_GPU = Request(1)
TWO_GPUS = Request(2)
ONE_SLICE = Request(1, mig_profile="1g.10gb")


def ledger():
    return Ledger(GPUS + MIG)


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
    grants = led.release("a/")
    assert [(g.owner, len(g.devices)) for g in grants] == [("b/", 1)]


def test_waiters_are_served_first_come_first_served():
    led = ledger()
    led.request("a/", Request(4))
    for name in ("b/", "c/", "d/"):
        assert led.request(name, ONE_GPU) is None
    assert led.position("d/") == (3, 3)
    led.release("a/")
    assert led.waiting() == []
    assert set(led.holdings) == {"b/", "c/", "d/"}


def test_higher_priority_goes_first():
    led = ledger()
    led.request("a/", Request(3))
    led.request("x/", ONE_GPU)
    led.request("student/", ONE_GPU, priority=0)
    led.request("researcher/", ONE_GPU, priority=10)
    assert led.position("researcher/") == (1, 2)
    assert [g.owner for g in led.release("x/")] == ["researcher/"]
    assert led.position("student/") == (1, 1)


def test_a_big_request_is_not_starved_by_later_small_ones():
    led = ledger()
    led.request("a/", Request(3))
    assert led.request("big/", TWO_GPUS) is None  # one GPU free: not enough
    assert led.request("small/", ONE_GPU) is None  # may not take big's reserved GPU
    granted = led.release("a/")
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


def test_asking_twice_returns_the_same_grant():
    led = ledger()
    first = led.request("a/", TWO_GPUS)
    assert led.request("a/", TWO_GPUS) == first
    assert len(led.free(ONE_GPU)) == 2


def test_rebuild_from_docker_restores_holdings_and_refuses_double_claims():
    led = ledger()
    report = led.rebuild({"a/": ("GPU-2",), "b/": ("GPU-2",), "c/": ("MIG-0",)})
    assert report.adopted == {"a/": ("GPU-2",), "c/": ("MIG-0",)}
    assert report.conflicts == {"b/": ("GPU-2",)}
    assert led.holder["GPU-2"] == "a/"
    assert led.request("d/", ONE_GPU).devices == ("GPU-0",)


def test_reconcile_releases_devices_of_containers_that_are_gone():
    led = ledger()
    led.request("a/", Request(4))
    led.request("b/", ONE_GPU)
    report = led.reconcile({})
    assert report.released == {"a/": ("GPU-0", "GPU-1", "GPU-2", "GPU-3")}
    assert [g.owner for g in led.dispatch()] == ["b/"]


def test_a_device_unknown_to_the_inventory_is_reported_not_adopted():
    led = ledger()
    report = led.reconcile({"x/": ("GPU-gone",)})
    assert report.conflicts == {"x/": ("GPU-gone",)}
    assert "x/" not in led.holdings


REQUESTS = st.sampled_from([ONE_GPU, TWO_GPUS, Request(3), ONE_SLICE, Request(2, mig_profile="1g.10gb")])
OWNERS = st.sampled_from([f"u{i}/" for i in range(8)])


class LedgerMachine(RuleBasedStateMachine):
    """Random interleavings of request / release / cancel / rebuild never break the ledger."""

    def __init__(self):
        super().__init__()
        self.led = ledger()
        self.keys = {}  # owner -> (priority, arrival) of its current wait

    def _check_order(self, granted):
        # Within a kind of device, grants follow queue order: nobody still waiting
        # for the same kind was ahead (higher priority, or same priority and earlier).
        for g in granted:
            req_pools = set(self.led.pools_for(self.requests[g.owner]))
            for owner, request in self.led.waiting():
                if set(self.led.pools_for(request)) == req_pools:
                    assert self.keys[owner] > self.keys[g.owner], (owner, g.owner)

    @rule(owner=OWNERS, request=REQUESTS, priority=st.integers(0, 2))
    def ask(self, owner, request, priority):
        if owner in self.led.holdings or owner in dict(self.led.waiting()):
            return
        self.requests = getattr(self, "requests", {})
        self.requests[owner] = request
        self.arrival = getattr(self, "arrival", 0) + 1
        self.keys[owner] = (-priority, self.arrival)
        before = dict(self.led.holdings)
        grant = self.led.request(owner, request, priority)
        granted = [type("G", (), {"owner": o})() for o in self.led.holdings if o not in before]
        self._check_order(granted)
        if grant is not None:
            assert len(grant.devices) == request.count
            assert all(request.accepts(self.led.devices[u]) for u in grant.devices)

    @rule(owner=OWNERS)
    def release(self, owner):
        self._check_order(self.led.release(owner))

    @rule(owner=OWNERS)
    def cancel(self, owner):
        self._check_order(self.led.cancel(owner))

    @precondition(lambda self: self.led.holdings)
    @rule()
    def hub_restarts(self):
        holdings = dict(self.led.holdings)
        waiting = self.led.waiting()
        fresh = ledger()
        report = fresh.rebuild(holdings)
        assert report.conflicts == {} and fresh.holdings == holdings
        # waiters re-ask after a restart, in their old order
        for owner, request in waiting:
            fresh.request(owner, request, -self.keys[owner][0])
        self.led = fresh

    @invariant()
    def no_device_is_held_twice(self):
        seen = [u for devs in self.led.holdings.values() for u in devs]
        assert len(seen) == len(set(seen))
        assert {u: o for o, devs in self.led.holdings.items() for u in devs} == self.led.holder

    @invariant()
    def free_and_held_partition_the_inventory(self):
        free = {d.uuid for d in self.led.free()}
        assert free.isdisjoint(self.led.holder)
        assert free | set(self.led.holder) == set(self.led.devices)

    @invariant()
    def nobody_waits_while_holding(self):
        assert not set(dict(self.led.waiting())) & set(self.led.holdings)

    def teardown(self):
        for owner in list(self.led.holdings) + [o for o, _ in self.led.waiting()]:
            self.led.release(owner)
        assert len(self.led.free()) == len(self.led.devices), "devices leaked"


LedgerMachine.TestCase.settings = hsettings(max_examples=300, stateful_step_count=40, deadline=None)
test_ledger_state_machine = LedgerMachine.TestCase
