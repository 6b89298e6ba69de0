"""How busy each granted device is, read from NVML: one `Reading` per device per `Sampler.sample()`.

NVML is blocking C calls; callers run `sample()` in a thread, never on the hub's event loop.

Which figure says "busy". A device's `activity` is what idle decisions use:

- GPM SM utilization ("gpm-sm") where the GPU has GPM (Hopper and later): the share of SMs that
  were busy over the interval between two samples. It is exact for that interval and it exists
  for a MIG slice too (read through its GPU with nvmlGpmMigSampleGet).
- Otherwise the utilization rate ("utilization", nvmlDeviceGetUtilizationRates(h).gpu): the share
  of recent time in which any kernel ran, over a window the driver chooses. One small kernel a
  second can keep it high, and it lags: on an H100 with tensors allocated but no kernels
  running, GPM read 0 at once while the rate still read 100 for one more sample. NVML gives no
  rate for a MIG slice.

GPM needs two samples, so the first sample of a device has no GPM figure: a whole GPU falls back
to its utilization rate, a MIG slice has no activity yet.

Memory in use is reported but is no sign of activity: a notebook that loaded a model and went
to lunch holds its memory all afternoon.

A figure is never invented. No activity figure: `activity` is None and `no_activity_reason` says
why. NVML failing for a device: `ok` is False and `error` says which call failed and how;
callers must never read such a device as idle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .devices import Device
from .inventory import canonical_uuid


@dataclass(frozen=True)
class Reading:
    uuid: str
    at: float  # time.time() of the sample
    ok: bool  # False: NVML failed for this device; NEVER treat as idle
    error: str = ""  # one line why not ok, e.g. "nvmlDeviceGetUtilizationRates: GPU is lost"
    activity: float | None = None  # percent 0..100 used for idle decisions; None = no activity figure exists
    activity_source: str = ""  # "gpm-sm", "utilization" or "" (none)
    no_activity_reason: str = ""  # when activity is None and ok: why
    utilization: float | None = None  # nvmlDeviceGetUtilizationRates(h).gpu, whole GPUs only
    gpm_sm: float | None = None  # GPM SM utilization over the interval since the previous sample
    memory_used: int | None = None  # bytes (for a MIG slice: of the slice)
    memory_total: int | None = None


class _Failed(Exception):
    """An NVML call failed; `line` names the call and the reason."""

    def __init__(self, call: str, error: Exception):
        self.line, self.error = f"{call}: {_reason(error)}", error
        super().__init__(self.line)


@dataclass
class _Target:
    """What one device needs on every sample, looked up once: dropped when any call on it fails."""

    handle: Any
    gpm_handle: Any = None  # the GPU that GPM samples are read from (a MIG slice's parent)
    gpu_instance_id: int | None = None  # a MIG slice's GPU instance on that GPU
    gpm: str = ""  # why GPM cannot be used ("" = it can)
    samples: list = field(default_factory=list)  # two GPM sample buffers: previous, next
    primed: bool = False  # samples[0] holds a sample


class Sampler:
    """Reads `Reading`s for devices; keeps NVML initialised and GPM samples between calls.

    Pass the same devices every time: the GPM state of a device left out of a call is dropped,
    so that a figure never spans a gap in which nobody looked.
    """

    def __init__(self, nvml: ModuleType | None = None, clock: Callable[[], float] = time.time):
        self._nvml = nvml
        self._clock = clock
        self._initialised = False
        self._targets: dict[str, _Target] = {}
        self._lock = threading.Lock()

    def sample(self, devices: Iterable[Device]) -> dict[str, Reading]:
        """One Reading per device, keyed by its (canonical) UUID. Blocking."""
        uuids = [(canonical_uuid(d.uuid), d) for d in devices]
        with self._lock:
            unavailable = self._start()
            if unavailable:
                now = self._clock()
                return {uuid: Reading(uuid, now, ok=False, error=unavailable) for uuid, _ in uuids}
            for uuid in set(self._targets) - {uuid for uuid, _ in uuids}:
                self._forget(uuid)
            return {uuid: self._read(uuid, device) for uuid, device in uuids}

    def close(self) -> None:
        """Free the GPM samples and shut NVML down, if this sampler initialised it."""
        with self._lock:
            for uuid in list(self._targets):
                self._forget(uuid)
            if self._initialised:
                self._initialised = False
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError:
                    pass

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> str:
        """Initialise NVML once; "" when ready, else why not (tried again at the next sample)."""
        if self._initialised:
            return ""
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                return "NVML unavailable: nvidia-ml-py is not installed"
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as e:
            return f"NVML unavailable: {_reason(e)}"
        self._initialised = True
        return ""

    def _read(self, uuid: str, device: Device) -> Reading:
        at = self._clock()
        try:
            target = self._targets.get(uuid) or self._target(uuid, device)
            if device.is_mig:
                return self._read_slice(uuid, at, target)
            return self._read_gpu(uuid, at, target)
        except _Failed as failed:
            self._forget(uuid)
            return Reading(uuid, at, ok=False, error=failed.line)

    def _target(self, uuid: str, device: Device) -> _Target:
        target = _Target(self._call("nvmlDeviceGetHandleByUUID", uuid))
        self._targets[uuid] = target
        if device.is_mig:
            target.gpm_handle = self._call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", target.handle)
            target.gpu_instance_id = self._call("nvmlDeviceGetGpuInstanceId", target.handle)
        else:
            target.gpm_handle = target.handle
        try:
            supported = self._call("nvmlGpmQueryDeviceSupport", target.gpm_handle).isSupportedDevice
        except _Failed as failed:
            if not self._no_such_feature(failed):
                raise
            supported = False
        if not supported:
            target.gpm = "MIG slice without GPM support" if device.is_mig else "no GPM support"
        return target

    def _read_gpu(self, uuid: str, at: float, target: _Target) -> Reading:
        memory = self._call("nvmlDeviceGetMemoryInfo", target.handle)
        try:
            utilization = float(self._call("nvmlDeviceGetUtilizationRates", target.handle).gpu)
            no_rate = ""
        except _Failed as failed:
            if not isinstance(failed.error, self._nvml.NVMLError_NotSupported):
                raise
            utilization, no_rate = None, "no utilization rate"
        gpm_sm, no_gpm = self._gpm(target)
        if gpm_sm is not None:
            activity, source, reason = gpm_sm, "gpm-sm", ""
        elif utilization is not None:
            activity, source, reason = utilization, "utilization", ""
        else:
            activity, source, reason = None, "", f"{no_gpm} and {no_rate}"
        return Reading(
            uuid,
            at,
            ok=True,
            activity=activity,
            activity_source=source,
            no_activity_reason=reason,
            utilization=utilization,
            gpm_sm=gpm_sm,
            memory_used=int(memory.used),
            memory_total=int(memory.total),
        )

    def _read_slice(self, uuid: str, at: float, target: _Target) -> Reading:
        memory = self._call("nvmlDeviceGetMemoryInfo", target.handle)
        gpm_sm, no_gpm = self._gpm(target)
        return Reading(
            uuid,
            at,
            ok=True,
            activity=gpm_sm,
            activity_source="" if gpm_sm is None else "gpm-sm",
            no_activity_reason=no_gpm,
            gpm_sm=gpm_sm,
            memory_used=int(memory.used),
            memory_total=int(memory.total),
        )

    def _gpm(self, target: _Target) -> tuple[float | None, str]:
        """(GPM SM utilization since the previous sample, "") or (None, why there is none)."""
        if target.gpm:
            return None, target.gpm
        nvml = self._nvml
        if not target.samples:
            target.samples = [self._call("nvmlGpmSampleAlloc"), self._call("nvmlGpmSampleAlloc")]
        previous, latest = target.samples
        try:
            if target.gpu_instance_id is None:
                self._call("nvmlGpmSampleGet", target.gpm_handle, latest)
            else:
                self._call("nvmlGpmMigSampleGet", target.gpm_handle, target.gpu_instance_id, latest)
        except _Failed as failed:
            if not self._no_such_feature(failed):
                raise
            target.gpm = f"GPM unavailable ({_reason(failed.error)})"
            return None, target.gpm
        target.samples.reverse()  # latest becomes the previous sample of the next call
        if not target.primed:
            target.primed = True
            return None, "GPM: first sample (needs two)"
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = 1
        request.sample1, request.sample2 = previous, latest
        request.metrics[0].metricId = nvml.NVML_GPM_METRIC_SM_UTIL
        self._call("nvmlGpmMetricsGet", request)
        metric = request.metrics[0]
        if metric.nvmlReturn != nvml.NVML_SUCCESS:
            return None, f"GPM SM utilization: {_reason(nvml.NVMLError(metric.nvmlReturn))}"
        return float(metric.value), ""

    def _call(self, name: str, *args):
        try:
            return getattr(self._nvml, name)(*args)
        except self._nvml.NVMLError as e:
            raise _Failed(name, e) from e

    def _no_such_feature(self, failed: _Failed) -> bool:
        """The driver or device lacks the feature (not supported, or an NVML without the function)."""
        nvml = self._nvml
        return isinstance(failed.error, nvml.NVMLError_NotSupported | nvml.NVMLError_FunctionNotFound)

    def _forget(self, uuid: str) -> None:
        target = self._targets.pop(uuid, None)
        for sample in target.samples if target else ():
            try:
                self._nvml.nvmlGpmSampleFree(sample)
            except self._nvml.NVMLError:
                pass


def _reason(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
