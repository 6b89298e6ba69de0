"""The GPU part of the deployment, from one JSON file (GPUHUB_GPU_CONFIG), checked at hub start.

    {
      "profiles": [ ...profile_list entries... ],
      "gpus": [ ...static inventory; omit to ask NVML... ],
      "exclude": ["GPU-…"],
      "quota": {"default": {...}, "groups": {"students": {...}}}
    }

Every problem stops the hub with one line naming the file and what is wrong.
"""

from __future__ import annotations

import json
from typing import Any

from . import inventory, profiles, quota

KEYS = {"profiles", "gpus", "exclude", "quota"}
MAX_MESSAGE = 400  # characters of an error message, the path included


class GPUConfigError(ValueError):
    pass


# The inventory config load discovered, so the hub's GPU service starts from it instead of
# initialising NVML a second time; keyed by the (gpus, exclude) it was found with.
_loaded: dict[str, inventory.Inventory] = {}


def _key(gpus, exclude) -> str:
    return json.dumps([gpus, exclude], sort_keys=True, default=str)


def take_loaded(gpus, exclude) -> inventory.Inventory | None:
    """The inventory `load()` found for these settings, once (later calls discover again)."""
    return _loaded.pop(_key(list(gpus), list(exclude)), None)


def load(path: str, discover=inventory.discover, hub_idle_timeout: float = 0) -> dict[str, Any]:
    """Read and validate; returns the values for the spawner and GPUQuota traits."""
    if not path:
        return {
            "profiles": [],
            "gpus": [],
            "exclude": [],
            "default": {},
            "groups": {},
            "inventory": None,
            "disabled": [],
        }
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise GPUConfigError(_one_line(f"{path}: cannot read it ({e.strerror})")) from None
    except UnicodeDecodeError as e:
        raise GPUConfigError(_one_line(f"{path}: not UTF-8 text (byte {e.start})")) from None
    except json.JSONDecodeError as e:
        raise GPUConfigError(_one_line(f"{path}: not valid JSON ({e.msg} at line {e.lineno})")) from None
    except RecursionError:
        raise GPUConfigError(_one_line(f"{path}: not valid JSON (nested too deeply)")) from None
    except ValueError as e:  # a number of more digits than Python reads (sys.get_int_max_str_digits())
        raise GPUConfigError(_one_line(f"{path}: not valid JSON ({str(e).split(':')[0]})")) from None
    try:
        return _validate(data, discover, hub_idle_timeout)
    except (GPUConfigError, inventory.InventoryError, profiles.ProfileError, quota.QuotaError) as e:
        raise GPUConfigError(_one_line(f"{path}: {e}")) from None


def _one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """A message as the hub prints it: one line (keys and values from the file may hold newlines or
    other unprintable characters: escaped), at most `limit` characters (they may be very long)."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _validate(data: Any, discover, hub_idle_timeout: float = 0) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise GPUConfigError("must hold a JSON object")
    unknown = set(data) - KEYS
    if unknown:
        raise GPUConfigError(f"unknown keys: {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(KEYS))})")
    exclude = data.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(u, str) for u in exclude):
        raise GPUConfigError("exclude must be a list of device UUIDs")
    gpus = data.get("gpus", [])
    if not isinstance(gpus, list):
        raise GPUConfigError("gpus must be a list of devices")
    found = inventory.from_static(gpus, exclude) if gpus else discover(exclude=exclude)
    profile_list = data.get("profiles", [])
    if not isinstance(profile_list, list):
        raise GPUConfigError("profiles must be a list")
    parsed = profiles.parse(profile_list, found, hub_idle_timeout)
    slugs = {p.slug for p in parsed}
    quotas = data.get("quota", {})
    if not isinstance(quotas, dict) or set(quotas) - {"default", "groups"}:
        raise GPUConfigError("quota must be an object with 'default' and/or 'groups'")
    default = quotas.get("default", {})
    groups = quotas.get("groups", {})
    if not isinstance(groups, dict):
        raise GPUConfigError("quota.groups must map group names to quotas")
    for source, value in [("quota.default", default)] + [(f"group {g!r}", v) for g, v in groups.items()]:
        parsed_quota = quota.parse(value, source)
        missing = (parsed_quota.get("profiles") or set()) - slugs
        if missing:
            raise GPUConfigError(f"quota of {source} names unknown profile(s): {', '.join(sorted(missing))}")
    _loaded[_key(gpus, exclude)] = found
    # A profile this host cannot serve (a GPU lost, excluded or not there yet) is disabled, not fatal.
    disabled = [
        profiles.unservable(p, sum(1 for d in found.devices if p.gpu.accepts(d))) for p in parsed if p.gpu is not None
    ]
    return {
        "profiles": profile_list,
        "gpus": gpus,
        "exclude": exclude,
        "default": default,
        "groups": groups,
        "inventory": found,
        "disabled": [_one_line(f"{why}: disabled until it can") for why in disabled if why],
    }
