"""What users can ask for: KubeSpawner's `profile_list` shape, validated. Pure.

c.GPUDockerSpawner.profile_list = [
    {"slug": "cpu", "display_name": "CPU only", "default": True},
    {"slug": "mig-small", "display_name": "1 MIG slice (10 GB)",
     "gpu": {"count": 1, "mig_profile": "1g.10gb"}, "mem_limit": "16G"},
    {"slug": "a100x2", "display_name": "2 x A100", "gpu": {"count": 2, "model": "NVIDIA A100-SXM4-80GB"},
     "mem_limit": "64G", "cpu_limit": 16, "image": "gpuhub/notebook:latest",
     "gpu_idle_timeout": "30m", "gpu_idle_threshold": 5, "max_runtime": "8h", "idle_timeout": "20m"},
]

Limits (docs/gpus.md, "Culling, limits and budgets"): `gpu_idle_timeout` (GPU profiles only) with
`gpu_idle_threshold` (percent, default 5), `max_runtime` and `idle_timeout`; durations as "30m",
"2h", "90s" or seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import budget, mig
from .culling import Limits
from .devices import Request
from .inventory import Inventory
from .sizes import parse_size

_SLUG = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
_LIMIT_KEYS = {"gpu_idle_timeout", "gpu_idle_threshold", "max_runtime", "idle_timeout"}
_KEYS = {"slug", "display_name", "description", "default", "gpu", "mem_limit", "cpu_limit", "image"} | _LIMIT_KEYS
# More than any host has; the engines get the limit as a 64-bit count (Docker: CPU-microseconds per
# 100 ms period, Swarm: nano-CPUs), which NaN, infinity or 1e308 CPUs would not fit.
MAX_CPUS = 1_000_000


class ProfileError(ValueError):
    """The profile list is malformed; one line naming the profile and the problem."""


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str = ""
    default: bool = False
    gpu: Request | None = None
    mem_limit: str | None = None
    cpu_limit: float | None = None
    image: str | None = None
    limits: Limits = Limits()

    @property
    def device_count(self) -> int:
        return self.gpu.count if self.gpu else 0


CPU_ONLY = Profile("cpu", "CPU only", "No GPU.", default=True)


def parse(
    profile_list: Sequence[Mapping[str, Any]], inventory: Inventory | None = None, hub_idle_timeout: float = 0
) -> list[Profile]:
    """Validate `profile_list` into Profiles (MIG profile names also against the inventory's GPUs).

    `hub_idle_timeout`: the hub-wide activity culler's timeout (0: none); a profile's
    `idle_timeout` must be shorter, or it would never act.

    Whether the host can serve a profile *now* is not decided here: GPUs come and go,
    and a profile the host cannot serve is disabled at admission, never a reason for
    the hub not to start (`unservable()`).
    """
    if not profile_list:
        return [CPU_ONLY]
    known_mig = mig.KNOWN_PROFILES | (inventory.mig_profiles if inventory else frozenset())
    profiles: list[Profile] = []
    for i, entry in enumerate(profile_list):
        where = f"profile #{i + 1}"
        if not isinstance(entry, Mapping):
            raise ProfileError(f"{where} must be a dict, got {type(entry).__name__}")
        slug = entry.get("slug")
        if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
            raise ProfileError(f"{where}: slug {slug!r} must be lower-case letters, digits and '-'")
        where = f"profile {slug!r}"
        unknown = set(entry) - _KEYS
        if unknown:
            raise ProfileError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        if any(p.slug == slug for p in profiles):
            raise ProfileError(f"{where} is defined twice")
        name = entry.get("display_name")
        if not isinstance(name, str) or not name.strip():
            raise ProfileError(f"{where} needs a display_name")
        request = _gpu(entry.get("gpu"), where, known_mig)
        mem = entry.get("mem_limit")
        if mem is not None:
            try:
                parse_size(str(mem))
            except (ValueError, OverflowError):
                raise ProfileError(f"{where}: mem_limit {mem!r} is not a size such as 16G") from None
            # DockerSpawner's mem_limit trait reads a string only with its unit (and no spaces).
            mem = str(mem).strip().upper()
            if not mem.endswith(("K", "M", "G", "T")):
                raise ProfileError(f"{where}: mem_limit {mem!r} needs a unit: K, M, G or T, as in 16G")
        cpu = entry.get("cpu_limit")
        if cpu is not None and (not isinstance(cpu, (int, float)) or isinstance(cpu, bool) or not 0 < cpu <= MAX_CPUS):
            raise ProfileError(f"{where}: cpu_limit must be a positive number of CPUs, at most {MAX_CPUS}")
        image = entry.get("image")
        if image is not None and (not isinstance(image, str) or not image):
            raise ProfileError(f"{where}: image must be an image name")
        profiles.append(
            Profile(
                slug,
                name.strip(),
                str(entry.get("description", "")),
                bool(entry.get("default", False)),
                request,
                mem,
                float(cpu) if cpu is not None else None,
                image,
                _limits(entry, where, request, hub_idle_timeout),
            )
        )
    defaults = [p.slug for p in profiles if p.default]
    if len(defaults) > 1:
        raise ProfileError(f"only one profile may be the default, got {', '.join(defaults)}")
    return profiles


def _gpu(spec: Any, where: str, known_mig: Iterable[str]) -> Request | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ProfileError(f"{where}: gpu must be a dict like {{'count': 1, 'mig_profile': '1g.10gb'}}")
    unknown = set(spec) - {"count", "mig_profile", "model"}
    if unknown:
        raise ProfileError(f"{where}: gpu has unknown keys: {', '.join(sorted(unknown))}")
    count = spec.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ProfileError(f"{where}: gpu count must be a whole number >= 1, got {count!r}")
    mig_profile, model = spec.get("mig_profile"), spec.get("model")
    if model is not None and not isinstance(model, str):
        raise ProfileError(f"{where}: gpu model must be a GPU model name such as 'NVIDIA A100-SXM4-80GB'")
    if mig_profile is not None and model is not None:
        raise ProfileError(f"{where}: gpu names a mig_profile or a model, not both")
    if mig_profile is not None and (
        not isinstance(mig_profile, str) or not mig.is_profile_name(mig_profile) or mig_profile not in known_mig
    ):
        raise ProfileError(f"{where}: unknown MIG profile {mig_profile!r} (known: 1g.10gb, 3g.40gb, 7g.80gb, ...)")
    return Request(count, mig_profile=mig_profile, model=model)


def _limits(entry: Mapping[str, Any], where: str, request: Request | None, hub_idle_timeout: float) -> Limits:
    values: dict[str, float] = {}
    try:
        for key in ("gpu_idle_timeout", "max_runtime", "idle_timeout"):
            if entry.get(key) is not None:
                values[key] = budget.duration(entry[key], f"{where}: {key}")
    except budget.BudgetError as e:
        raise ProfileError(str(e)) from None
    threshold = entry.get("gpu_idle_threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 100:
            raise ProfileError(f"{where}: gpu_idle_threshold must be a percentage above 0 and at most 100")
        values["gpu_idle_threshold"] = float(threshold)
    if request is None and ("gpu_idle_timeout" in values or "gpu_idle_threshold" in values):
        raise ProfileError(f"{where}: gpu_idle_timeout and gpu_idle_threshold need a gpu in the profile")
    if "idle_timeout" in values and hub_idle_timeout and values["idle_timeout"] >= hub_idle_timeout:
        raise ProfileError(
            f"{where}: idle_timeout ({values['idle_timeout']:.0f} s) must be shorter than the hub-wide"
            f" GPUHUB_IDLE_TIMEOUT ({hub_idle_timeout:.0f} s), which already stops idle servers"
        )
    return Limits(**values)


def unservable(profile: Profile, usable: int) -> str:
    """Why the host cannot serve `profile` with `usable` such devices; empty if it can."""
    if profile.gpu is None or usable >= profile.gpu.count:
        return ""
    return f"profile {profile.slug!r} asks for {profile.gpu.label} but this host has {usable} such device(s)"


def choose(profiles: Sequence[Profile], slug: str | None) -> Profile:
    """The profile a spawn asked for (by slug), or the default one."""
    if not slug:
        return next((p for p in profiles if p.default), profiles[0])
    for p in profiles:
        if p.slug == slug:
            return p
    raise ProfileError(f"unknown profile {slug!r}; choose one of: {', '.join(p.slug for p in profiles)}")
