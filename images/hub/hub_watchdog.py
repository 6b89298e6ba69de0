"""Start the hub container again after it was killed rather than stopped.

Docker's restart policy brings the hub back after it exits by itself (a crash, the kernel's OOM
killer, a reboot), but Docker counts `docker kill` as stopping it by hand and leaves the container
down ("the restart policy is disabled until the next time the container is started", docker-kill(1)).
So a hub killed with SIGKILL, by an admin or a tool, would stay down with every user's server
unreachable. This follows the hub's events and starts it again when it died after a kill that was
not a stop: `docker stop`, `make down`, `make restart` and daemon shutdowns send the stop signal
(SIGTERM) first, and a hub stopped that way stays stopped.

    python3 hub_watchdog.py CONTAINER
"""

from __future__ import annotations

import sys
import time

import docker
import requests

STOP_SIGNALS = {"15", "SIGTERM", "TERM"}
# When the watchdog (re)connects it reads this much of the past first, so a kill it missed (it was
# restarting too, or the event stream broke) is still acted on.
CATCH_UP_S = 60


def log(message: str) -> None:
    print(f"gpuhub-watchdog: {message}", flush=True)


class Watch:
    """What happened to the container since it last started."""

    def __init__(self) -> None:
        self.killed = False
        self.asked_to_stop = False

    def should_start(self, event: dict) -> bool:
        """Feed one container event; True when the container died of a kill that was not a stop."""
        action = event.get("Action") or event.get("status") or ""
        if action == "start":
            self.killed = self.asked_to_stop = False
        elif action == "kill":
            self.killed = True
            signal = str((event.get("Actor") or {}).get("Attributes", {}).get("signal", ""))
            self.asked_to_stop |= signal in STOP_SIGNALS
        elif action == "die":
            return self.killed and not self.asked_to_stop
        return False


def start_if_down(client, name: str) -> None:
    try:
        state = client.api.inspect_container(name)["State"]
    except docker.errors.NotFound:
        return  # removed (docker rm -f): nothing to bring back
    if state["Status"] != "exited":
        return  # running again, or Docker's restart policy is about to restart it
    log(f"{name} was killed (exit code {state['ExitCode']}), which Docker does not restart; starting it")
    try:
        client.api.start(name)
    except docker.errors.APIError as e:  # being removed, or started by someone else meanwhile
        log(f"could not start {name}: {e.explanation or e}")


def follow(client, name: str, since: float) -> float:
    """Catch up from `since`, then act on the container's events as they come until the stream
    ends; returns the time of the last event seen."""
    watch = Watch()
    filters = {"type": "container", "container": name}
    now = int(time.time())
    # Past events only set the state; acting on each past death could start a hub that was killed,
    # started again and then stopped on purpose.
    killed_last = False
    for event in client.events(since=int(since), until=now, filters=filters, decode=True):
        since = event.get("time", since)
        verdict = watch.should_start(event)
        if (event.get("Action") or event.get("status")) in ("start", "die"):
            killed_last = verdict
    if killed_last:
        start_if_down(client, name)
    for event in client.events(since=now, filters=filters, decode=True):
        since = event.get("time", since)
        if watch.should_start(event):
            start_if_down(client, name)
    return since


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    name = sys.argv[1]
    client = docker.from_env(version="auto", timeout=None)
    since = 0.0
    log(f"watching {name}")
    while True:
        try:
            since = follow(client, name, max(since, time.time() - CATCH_UP_S))
        except (docker.errors.DockerException, requests.RequestException) as e:
            log(f"lost Docker's event stream ({e}); reconnecting")
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
