"""A GPU node's Docker daemon settings for gpuhub on Swarm, from `nvidia-smi -L`. Pure.

`scripts/swarm-join-node.sh` runs this on a new GPU node: it advertises the node's GPUs (or,
on a GPU in MIG mode, its MIG slices) as Swarm generic resources so the manager, and through
it the hub, knows them; makes the nvidia runtime the default (services cannot pick a runtime);
and turns on no-new-privileges for every container (services cannot set it on Engine < 25).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import swarm

_GPU = re.compile(r"^GPU (\d+): (.+?) \(UUID: (GPU-[0-9A-Za-z-]+)\)\s*$")
_MIG = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[0-9A-Za-z/-]+)\)\s*$")


class NodeConfigError(ValueError):
    """`nvidia-smi -L` output gpuhub cannot read (one line naming the line)."""


def parse_nvidia_smi(text: str) -> tuple[list[tuple[str, str]], str]:
    """(generic resources as (kind, uuid), GPU model) from `nvidia-smi -L`.

    A GPU with MIG slices is advertised as its slices only: handing out the whole GPU and a slice
    of it would share it.
    """
    gpus: list[tuple[str, str, list[tuple[str, str]]]] = []  # model, uuid, slices
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if m := _GPU.match(line):
            gpus.append((m.group(2), m.group(3), []))
        elif (m := _MIG.match(line)) and gpus:
            gpus[-1][2].append((f"{swarm.MIG_KIND_PREFIX}{m.group(1).upper()}", m.group(3)))
        else:
            raise NodeConfigError(f"nvidia-smi -L line {n} is not a GPU or MIG device line: {line.strip()[:120]!r}")
    resources: list[tuple[str, str]] = []
    for _model, uuid, slices in gpus:
        resources += slices or [(swarm.GPU_KIND, uuid)]
    models = sorted({model for model, _, _ in gpus})
    return resources, models[0] if len(models) == 1 else ""


def daemon_config(existing: Mapping[str, Any], resources: list[tuple[str, str]]) -> dict[str, Any]:
    """The node's daemon.json: its own settings kept, gpuhub's set."""
    config = dict(existing)
    runtimes = dict(config.get("runtimes") or {})
    runtimes.setdefault("nvidia", {"path": "nvidia-container-runtime", "runtimeArgs": []})
    config.update(
        {
            "runtimes": runtimes,
            "default-runtime": "nvidia",
            "no-new-privileges": True,
            "node-generic-resources": [f"{kind}={uuid}" for kind, uuid in resources],
        }
    )
    return config


def main(argv: list[str] | None = None) -> int:
    """`python -m spawner.swarm_node DAEMON_JSON < nvidia-smi-L.txt`: print the merged daemon.json."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "/etc/docker/daemon.json"
    try:
        with open(path) as f:
            existing = json.load(f)
    except FileNotFoundError:
        existing = {}
    except (OSError, ValueError) as e:
        print(f"gpuhub: {path} is unreadable ({e}); fix or move it first", file=sys.stderr)
        return 1
    try:
        resources, model = parse_nvidia_smi(sys.stdin.read())
    except NodeConfigError as e:
        print(f"gpuhub: {e}", file=sys.stderr)
        return 1
    if not resources:
        print("gpuhub: nvidia-smi -L lists no GPU: is this a GPU node?", file=sys.stderr)
        return 1
    print(json.dumps(daemon_config(existing, resources), indent=2))
    if model:
        print(f"gpuhub: GPU model {model}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
