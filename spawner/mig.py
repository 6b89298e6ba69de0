"""MIG profile names ("1g.10gb", "1g.10gb+me"): their grammar, how NVML spells them, and the
profiles NVIDIA's data-centre GPUs offer. Pure.

A profile is "<compute slices>g.<memory GB>gb", optionally with a media-extension suffix
(`+me`, `-me`, `+me.all`, `+gfx`).
"""

from __future__ import annotations

import re

_BASE = r"\d+g\.\d+gb"
_PROFILE = re.compile(rf"^{_BASE}(?:[+-](?:me\.all|me|gfx))?$")
# NVML names a MIG device or GPU-instance profile "<GPU model> MIG <profile>". Any suffix is kept
# as written, so a slice with a suffix this module does not know is never taken for a plain one.
_IN_NVML_NAME = re.compile(rf"\bMIG\s+({_BASE}(?:[+-][\w.]*\w)?)", re.IGNORECASE)

#: MIG profiles NVIDIA's data-centre GPUs offer (A30, A100 40/80 GB, H100 80/94 GB, H200, B200).
KNOWN_PROFILES = frozenset(
    """
    1g.6gb 1g.6gb+me 2g.12gb 2g.12gb+me 4g.24gb
    1g.5gb 1g.5gb+me 1g.10gb 2g.10gb 3g.20gb 4g.20gb 7g.40gb
    1g.10gb+me 1g.20gb 2g.20gb 3g.40gb 4g.40gb 7g.80gb
    1g.12gb 1g.12gb+me 1g.24gb 2g.24gb 3g.47gb 4g.47gb 7g.94gb
    1g.18gb 1g.18gb+me 1g.35gb 2g.35gb 3g.71gb 4g.71gb 7g.141gb
    1g.23gb 1g.23gb+me 1g.45gb 2g.45gb 3g.90gb 4g.90gb 7g.180gb
    """.split()
)


def is_profile_name(name: str) -> bool:
    """Whether `name` is spelled like a MIG profile ("1g.10gb", "1g.10gb+me"); lower-case only."""
    return bool(_PROFILE.fullmatch(name))


def from_nvml_name(name: str) -> str | None:
    """The profile in an NVML name ("NVIDIA H100 80GB HBM3 MIG 1g.10gb" -> "1g.10gb"), lower-case.

    None when the name carries none: drivers before R470 name MIG devices like their GPU.
    """
    match = _IN_NVML_NAME.search(name)
    return match.group(1).lower() if match else None


def from_geometry(slices: int, memory_mib: int) -> str:
    """The profile name of a slice with `slices` compute slices and `memory_mib` of memory."""
    return f"{slices}g.{round(memory_mib / 1024)}gb"
