"""Queue hand-off: from a GPU being released to the next waiter's container running.

A real hub with one (static) GPU; user A holds it, user B waits in the queue.
A's server is stopped; measured from Docker's `destroy` event of A's container
(the moment gpuhub gives the device back) to the `start` event of B's container,
and on to B's server answering (ready). Repeated, the roles alternating.
Goal: release -> running <= 1 s.

    python -m benchmarks.queue_handoff [--rounds 6] [--image gpuhub/notebook:cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker

from harness.hub import TEST_HUB_ID, Hub, ensure_network
from spawner.container import LABEL_HUB, LABEL_USER

CONFIG = {
    "profiles": [{"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}, "default": True}],
    "gpus": ["GPU-be0c0000-0000-0000-0000-000000000001"],
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--image", default="gpuhub/notebook:cpu")
    args = parser.parse_args()
    client = docker.from_env()
    ensure_network(client)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gpus.json"
        config.write_text(json.dumps(CONFIG))
        hub = Hub(Path(tmp), args.image, env={"GPUHUB_GPU_CONFIG": str(config)}).start()
        users = ["bench-handoff-a", "bench-handoff-b"]
        events: list[dict] = []
        stop = threading.Event()

        def watch():
            for e in client.api.events(
                decode=True, filters={"type": "container", "label": f"{LABEL_HUB}={TEST_HUB_ID}"}
            ):
                events.append(e)
                if stop.is_set():
                    return

        threading.Thread(target=watch, daemon=True).start()
        try:
            hub.start_server(users[0])
            hub.wait_ready(users[0])
            running, waiting = users
            to_start, to_ready = [], []
            for _ in range(args.rounds):
                hub.start_server(waiting)
                time.sleep(1.5)  # it is queued now
                hub.stop_server(running)
                hub.wait_ready(waiting)
                ready_at = time.time()
                time.sleep(0.5)  # let the events arrive
                destroyed = (
                    max(
                        e["timeNano"]
                        for e in events
                        if e["Action"] == "destroy" and e["Actor"]["Attributes"].get(LABEL_USER) == running
                    )
                    / 1e9
                )
                started = (
                    max(
                        e["timeNano"]
                        for e in events
                        if e["Action"] == "start" and e["Actor"]["Attributes"].get(LABEL_USER) == waiting
                    )
                    / 1e9
                )
                to_start.append(started - destroyed)
                to_ready.append(ready_at - destroyed)
                running, waiting = waiting, running
            hub.stop_server(running)
        finally:
            stop.set()
            hub.stop()
            for u in users:
                try:
                    client.volumes.get(f"jupyterhub-user-{u}").remove(force=True)
                except docker.errors.NotFound:
                    pass
    print(f"Queue hand-off over {args.rounds} rounds (image {args.image})")
    print(
        f"  released -> next container running: median {statistics.median(to_start):.3f} s, "
        f"max {max(to_start):.3f} s (goal <= 1 s: {'met' if max(to_start) <= 1 else 'NOT met'})"
    )
    print(
        f"  released -> next server ready (progress stream): median {statistics.median(to_ready):.2f} s, "
        f"max {max(to_ready):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
