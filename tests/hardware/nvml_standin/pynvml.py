"""STAND-IN `pynvml` AT THE HARDWARE BOUNDARY: NOT NVIDIA's library, and no GPU is ever touched.

For integration tests that run a hub *process* on a machine without the GPUs they describe: put
this directory first on the hub's PYTHONPATH and set GPUHUB_FAKE_NVML to a layout JSON file (the
layout of `tests/hardware/fake_pynvml.py`). `import pynvml` then gives `fake_pynvml.make(...)`,
which looks at that file on every NVML call (parsing it again only when it changed), so a test
changes a GPU's utilization, or makes one fail, by rewriting the file atomically (write a temporary
file, then `os.replace`).

fake_pynvml raises the *real* pynvml's error classes, so NVIDIA's module is loaded here by path,
from the sys.path entries other than this directory, and handed to fake_pynvml while it imports.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from importlib.machinery import PathFinder

_HERE = os.path.dirname(os.path.realpath(__file__))
_LAYOUT = os.environ.get("GPUHUB_FAKE_NVML")
if not _LAYOUT:
    raise RuntimeError(f"stand-in pynvml ({__file__}): set GPUHUB_FAKE_NVML to a layout JSON file")


def _load(spec):
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_others = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]
_real_spec = PathFinder.find_spec("pynvml", _others)
if _real_spec is None:
    raise ImportError("stand-in pynvml: NVIDIA's pynvml (nvidia-ml-py) is not installed beside it")
_real = _load(_real_spec)

_standin = sys.modules[__name__]
sys.modules["pynvml"] = _real  # what fake_pynvml's `import pynvml` finds
try:
    _fake_pynvml = _load(
        importlib.util.spec_from_file_location("fake_pynvml", os.path.join(os.path.dirname(_HERE), "fake_pynvml.py"))
    )
finally:
    sys.modules["pynvml"] = _standin


_parsed: dict = {}


def _layout() -> dict:
    # A stat per call, a parse per change: a sampler of 64 devices must not spend its time in json.
    st = os.stat(_LAYOUT)
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _parsed:
        with open(_LAYOUT) as f:
            _parsed.clear()
            _parsed[key] = json.load(f)
    return _parsed[key]


# The import statement returns what sys.modules holds once this module has run: the fake itself.
sys.modules["pynvml"] = _fake_pynvml.make(_layout)
