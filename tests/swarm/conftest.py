"""A simulated 3-node Docker Swarm (harness/swarm.py), one per test session.

Starting one takes seconds, but each node's images are loaded anew, so the cluster is shared by
the whole session; tests that break a node bring it back before they end. Images a test module
needs on every node are named with `pytest.mark.swarm_images("tag", ...)`: the union over the
session's selected tests is loaded once, before the swarm forms (SwarmCluster.up(images=...)),
which is much faster than loading into each node later. At the end of the session the cluster
is torn down and the host is checked for anything it left behind.
"""

from __future__ import annotations

import pytest

from harness import swarm as swarm_harness

_timings: dict[str, float] = {}


def pytest_collection_modifyitems(items):
    for item in items:
        if "/swarm/" in str(item.fspath):
            item.add_marker(pytest.mark.swarm)


def pytest_terminal_summary(terminalreporter):
    if _timings:
        terminalreporter.section("simulated Swarm")
        for what, seconds in _timings.items():
            terminalreporter.write_line(f"  {what}: {seconds:.1f} s")


def wanted_images(items) -> list[str]:
    """The tags of every swarm_images mark of the selected tests, in order, once each."""
    tags: dict[str, None] = {}
    for item in items:
        for mark in item.iter_markers("swarm_images"):
            tags.update(dict.fromkeys(mark.args))
    return list(tags)


@pytest.fixture(scope="session")
def swarm(request):
    reason = swarm_harness.missing_prerequisites()
    if reason:
        pytest.skip(reason)
    images = wanted_images(request.session.items)
    missing = [tag for tag in images if swarm_harness.run(["docker", "image", "inspect", tag], check=False).returncode]
    if missing:
        pytest.fail(f"not on the host's Docker Engine: {', '.join(missing)} (make test-images builds the test images)")
    lb_before = swarm_harness.host_lb_entries()
    cluster = swarm_harness.SwarmCluster()
    cluster.up(images=images)
    try:
        yield cluster
    finally:
        _timings.update(cluster.timings)
        cluster.down()
    left = swarm_harness.leftovers() + sorted(swarm_harness.host_lb_entries() - lb_before)
    assert not left, f"the simulated Swarm left behind: {left}"


@pytest.fixture(scope="session")
def busybox(swarm):
    """The tag of a busybox image present on every node."""
    return swarm.import_busybox()


@pytest.fixture(scope="session")
def swarm_cluster(swarm):
    """The same cluster, under the name tests/swarm/test_swarm_deployment.py asks for."""
    return swarm
