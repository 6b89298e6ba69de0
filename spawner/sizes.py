"""Memory sizes as Docker writes them ("512M", "8G"). Pure."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)$")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'8G' -> bytes. Suffixes K, M, G, T (powers of 1024), like Docker's."""
    match = _SIZE.match(text.strip().upper())
    if not match:
        raise ValueError("expected a size such as 512M or 8G")
    return int(float(match.group(1)) * _UNITS[match.group(2)])
