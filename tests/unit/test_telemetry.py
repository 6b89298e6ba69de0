import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spawner.devices import Device
from spawner.telemetry import Reading, Sampler
from tests.hardware import fake_pynvml

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "hardware" / "nvml_standin"


def gpu(uuid="GPU-a", utilization=0, gpm=0.0, used_mib=0, mig="disabled", **more):
    return {
        "uuid": uuid,
        "name": "NVIDIA H100 80GB HBM3",
        "memory_mib": 81559,
        "memory_used_mib": used_mib,
        "utilization": utilization,
        "gpm": gpm,
        "mig": mig,
        **more,
    }


def slice_(uuid, gpm=0.0, used_mib=0, **more):
    name = "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    return {"uuid": uuid, "name": name, "memory_mib": 9856, "memory_used_mib": used_mib, "gpm": gpm, **more}


def whole(uuid="GPU-a"):
    return Device(uuid, "NVIDIA H100 80GB HBM3", 81559)


def mig(uuid, parent="GPU-p"):
    return Device(uuid, "NVIDIA H100 80GB HBM3", 9856, "1g.10gb", parent)


class Counting:
    """The fake module, counting the calls made through it."""

    def __init__(self, module):
        self.module, self.calls = module, {}

    def __getattr__(self, name):
        found = getattr(self.module, name)
        if not name.startswith("nvml") or not callable(found):
            return found

        def counted(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return found(*args)

        return counted


# Whole GPUs


def test_a_busy_gpu_with_gpm_is_judged_by_gpm_from_the_second_sample_and_by_its_rate_before():
    layout = {"gpus": [gpu(utilization=97, gpm=88.5, used_mib=1490)]}
    sampler = Sampler(fake_pynvml.make(layout))
    first = sampler.sample([whole()])["GPU-a"]
    assert first.ok and first.activity == 97 and first.activity_source == "utilization"
    assert first.gpm_sm is None and first.utilization == 97
    second = sampler.sample([whole()])["GPU-a"]
    assert (second.activity, second.activity_source, second.gpm_sm) == (88.5, "gpm-sm", 88.5)
    assert second.memory_used == 1490 * 2**20 and second.memory_total == 81559 * 2**20


def test_an_idle_gpu_reads_idle_by_gpm_while_its_utilization_rate_still_lags():
    layout = {"gpus": [gpu(utilization=100, gpm=95.0)]}
    sampler = Sampler(fake_pynvml.make(layout))
    sampler.sample([whole()])
    layout["gpus"][0]["gpm"] = 0.0  # kernels stopped; the rate's window still covers them
    reading = sampler.sample([whole()])["GPU-a"]
    assert (reading.activity, reading.activity_source, reading.utilization) == (0.0, "gpm-sm", 100)


def test_gpm_reports_the_figure_of_the_interval_since_the_previous_sample():
    layout = {"gpus": [gpu(gpm=10.0)]}
    sampler = Sampler(fake_pynvml.make(layout))
    figures = []
    for gpm in (10.0, 60.0, 0.0):
        layout["gpus"][0]["gpm"] = gpm
        figures.append(sampler.sample([whole()])["GPU-a"].gpm_sm)
    assert figures == [None, 60.0, 0.0]


def test_a_gpu_without_gpm_is_judged_by_its_utilization_rate_every_sample():
    layout = {"gpus": [gpu(utilization=37, gpm="NotSupported")]}
    sampler = Sampler(fake_pynvml.make(layout))
    for utilization in (37, 0, 100):
        layout["gpus"][0]["utilization"] = utilization
        reading = sampler.sample([whole()])["GPU-a"]
        assert (reading.activity, reading.activity_source, reading.gpm_sm) == (utilization, "utilization", None)


def test_a_gpu_with_neither_a_utilization_rate_nor_gpm_has_no_activity_and_says_why():
    layout = {"gpus": [gpu(utilization="NotSupported", gpm="NotSupported", used_mib=300)]}
    reading = Sampler(fake_pynvml.make(layout)).sample([whole()])["GPU-a"]
    assert reading.ok and reading.activity is None and reading.activity_source == ""
    assert reading.no_activity_reason == "no GPM support and no utilization rate"
    assert reading.memory_used == 300 * 2**20  # memory is reported, never taken for activity


def test_a_gpu_without_a_utilization_rate_is_judged_by_gpm_once_it_has_two_samples():
    layout = {"gpus": [gpu(utilization="NotSupported", gpm=42.0)]}
    sampler = Sampler(fake_pynvml.make(layout))
    first = sampler.sample([whole()])["GPU-a"]
    assert first.ok and first.activity is None
    assert first.no_activity_reason == "GPM: first sample (needs two) and no utilization rate"
    assert sampler.sample([whole()])["GPU-a"].activity == 42.0


def test_a_gpu_whose_gpm_sampling_is_not_supported_after_all_falls_back_to_its_rate():
    layout = {"gpus": [gpu(utilization=55, gpm=1.0, fail={"nvmlGpmSampleGet": "NotSupported"})]}
    sampler = Sampler(fake_pynvml.make(layout))
    for _ in range(2):
        reading = sampler.sample([whole()])["GPU-a"]
        assert reading.ok and (reading.activity, reading.activity_source) == (55, "utilization")


def test_readings_are_keyed_by_canonical_uuid_and_stamped_by_the_clock():
    layout = {"gpus": [gpu(uuid="GPU-abc")]}
    reading = Sampler(fake_pynvml.make(layout), clock=lambda: 1234.5).sample([whole("gpu-ABC")])
    assert list(reading) == ["GPU-abc"] and reading["GPU-abc"].uuid == "GPU-abc"
    assert reading["GPU-abc"].at == 1234.5


# MIG slices


def test_a_mig_slice_with_gpm_gets_its_own_figure_from_its_gpu_instance_and_its_own_memory():
    slices = [slice_("MIG-x", gpm=90.0, used_mib=700, gpu_instance_id=7), slice_("MIG-y", gpm=0.0, used_mib=5)]
    layout = {"gpus": [gpu(uuid="GPU-p", gpm=45.0, used_mib=9999, mig=slices)]}
    sampler = Sampler(fake_pynvml.make(layout))
    first = sampler.sample([mig("MIG-x"), mig("MIG-y")])
    assert all(r.ok and r.activity is None for r in first.values())
    assert first["MIG-x"].no_activity_reason == "GPM: first sample (needs two)"
    second = sampler.sample([mig("MIG-x"), mig("MIG-y")])
    assert (second["MIG-x"].activity, second["MIG-x"].activity_source) == (90.0, "gpm-sm")
    assert second["MIG-y"].activity == 0.0
    assert second["MIG-x"].memory_used == 700 * 2**20 and second["MIG-x"].memory_total == 9856 * 2**20
    assert second["MIG-x"].utilization is None  # NVML has no utilization rate for a MIG device


def test_a_mig_slice_on_a_gpu_without_gpm_has_no_activity_never_an_invented_one():
    layout = {"gpus": [gpu(uuid="GPU-p", utilization=100, gpm="NotSupported", mig=[slice_("MIG-x", used_mib=64)])]}
    sampler = Sampler(fake_pynvml.make(layout))
    for _ in range(3):
        reading = sampler.sample([mig("MIG-x")])["MIG-x"]
        assert reading.ok and reading.activity is None and reading.activity_source == ""
        assert reading.no_activity_reason == "MIG slice without GPM support"
        assert reading.utilization is None and reading.memory_used == 64 * 2**20


# NVML errors


def test_one_failing_device_reads_not_ok_with_the_call_and_reason_and_the_others_are_fine():
    lost = gpu(uuid="GPU-b", fail={"nvmlDeviceGetUtilizationRates": "GpuIsLost"})
    layout = {"gpus": [gpu(uuid="GPU-a", utilization=12, gpm="NotSupported"), lost]}
    readings = Sampler(fake_pynvml.make(layout)).sample([whole("GPU-a"), whole("GPU-b")])
    assert readings["GPU-b"] == Reading(
        "GPU-b", readings["GPU-b"].at, ok=False, error="nvmlDeviceGetUtilizationRates: GPU is lost"
    )
    assert readings["GPU-a"].ok and readings["GPU-a"].activity == 12


def test_a_device_nvml_does_not_know_reads_not_ok():
    reading = Sampler(fake_pynvml.make({"gpus": [gpu()]})).sample([whole("GPU-gone")])["GPU-gone"]
    assert not reading.ok and reading.error == "nvmlDeviceGetHandleByUUID: Not Found"


def test_a_failing_mig_slice_reads_not_ok_and_its_sibling_is_fine():
    broken = slice_("MIG-b", fail={"nvmlGpmMigSampleGet": "Unknown"})
    layout = {"gpus": [gpu(uuid="GPU-p", mig=[slice_("MIG-a", used_mib=3), broken])]}
    readings = Sampler(fake_pynvml.make(layout)).sample([mig("MIG-a"), mig("MIG-b")])
    assert readings["MIG-b"].error == "nvmlGpmMigSampleGet: Unknown Error" and not readings["MIG-b"].ok
    assert readings["MIG-a"].ok and readings["MIG-a"].memory_used == 3 * 2**20


def test_when_nvml_cannot_start_every_reading_is_not_ok_and_the_next_sample_tries_again():
    layout = {"init_error": "DriverNotLoaded", "gpus": [gpu(uuid="GPU-a", utilization=5, gpm="NotSupported")]}
    sampler = Sampler(fake_pynvml.make(layout))
    readings = sampler.sample([whole("GPU-a"), whole("GPU-b")])
    assert {r.error for r in readings.values()} == {"NVML unavailable: Driver Not Loaded"}
    assert not any(r.ok for r in readings.values())
    del layout["init_error"]
    assert sampler.sample([whole("GPU-a")])["GPU-a"].activity == 5


def test_a_gpu_lost_mid_run_reads_not_ok_and_starts_over_when_it_returns():
    layout = {"gpus": [gpu(uuid="GPU-a", utilization=80, gpm=70.0), gpu(uuid="GPU-b")]}
    sampler = Sampler(fake_pynvml.make(layout))
    devices = [whole("GPU-a"), whole("GPU-b")]
    sampler.sample(devices)
    assert sampler.sample(devices)["GPU-a"].activity == 70.0
    fallen = layout["gpus"].pop(0)
    lost = sampler.sample(devices)
    assert not lost["GPU-a"].ok and lost["GPU-a"].activity is None and "GPU is lost" in lost["GPU-a"].error
    assert lost["GPU-b"].ok
    layout["gpus"].insert(0, fallen)
    back = sampler.sample(devices)["GPU-a"]
    assert back.ok and back.activity_source == "utilization"  # GPM needs two samples again
    assert sampler.sample(devices)["GPU-a"].activity_source == "gpm-sm"


def test_handles_are_looked_up_once_and_again_after_a_call_on_the_device_failed():
    layout = {"gpus": [gpu()]}
    nvml = Counting(fake_pynvml.make(layout))
    sampler = Sampler(nvml)
    for _ in range(3):
        sampler.sample([whole()])
    assert nvml.calls["nvmlDeviceGetHandleByUUID"] == 1 and nvml.calls["nvmlGpmQueryDeviceSupport"] == 1
    layout["gpus"][0]["fail"] = {"nvmlDeviceGetMemoryInfo": "Unknown"}
    assert not sampler.sample([whole()])["GPU-a"].ok
    del layout["gpus"][0]["fail"]
    assert sampler.sample([whole()])["GPU-a"].ok
    assert nvml.calls["nvmlDeviceGetHandleByUUID"] == 2


def test_gpm_samples_are_freed_for_devices_left_out_for_failing_devices_and_on_close():
    layout = {"gpus": [gpu(uuid="GPU-a"), gpu(uuid="GPU-b")]}
    nvml = Counting(fake_pynvml.make(layout))
    sampler = Sampler(nvml)
    sampler.sample([whole("GPU-a"), whole("GPU-b")])
    assert nvml.calls["nvmlGpmSampleAlloc"] == 4
    sampler.sample([whole("GPU-a")])
    assert nvml.calls["nvmlGpmSampleFree"] == 2
    sampler.close()
    assert nvml.calls["nvmlGpmSampleFree"] == 4 and nvml.calls["nvmlShutdown"] == 1
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()


def test_closing_a_sampler_that_never_started_nvml_does_not_shut_it_down():
    nvml = Counting(fake_pynvml.make({"init_error": "LibraryNotFound"}))
    sampler = Sampler(nvml)
    sampler.sample([whole()])
    sampler.close()
    assert "nvmlShutdown" not in nvml.calls


# The stand-in itself


def test_the_fake_reports_gpm_sm_utilization_only_and_sleeps_its_latency_per_call():
    layout = {"latency_ms": 20, "gpus": [gpu(gpm=33.0)]}
    nvml = fake_pynvml.make(layout)
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByUUID("GPU-a")
    one, two = nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()
    nvml.nvmlGpmSampleGet(handle, one)
    nvml.nvmlGpmSampleGet(handle, two)
    request = nvml.c_nvmlGpmMetricsGet_t()
    request.version, request.numMetrics = nvml.NVML_GPM_METRICS_GET_VERSION, 2
    request.sample1, request.sample2 = one, two
    request.metrics[0].metricId = nvml.NVML_GPM_METRIC_SM_UTIL
    request.metrics[1].metricId = nvml.NVML_GPM_METRIC_DRAM_BW_UTIL
    t0 = time.perf_counter()
    nvml.nvmlGpmMetricsGet(request)
    assert time.perf_counter() - t0 >= 0.02
    assert (request.metrics[0].nvmlReturn, request.metrics[0].value) == (nvml.NVML_SUCCESS, 33.0)
    assert request.metrics[1].nvmlReturn == nvml.NVML_ERROR_NOT_SUPPORTED


STANDIN_SCRIPT = """
import sys
import pynvml
from spawner.devices import Device
from spawner.telemetry import Sampler

pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByUUID("GPU-a")
sampler = Sampler()
for _ in range(2):
    reading = sampler.sample([Device("GPU-a")])["GPU-a"]
    print(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu, reading.activity, reading.activity_source, flush=True)
    sys.stdin.readline()
"""


def test_the_standin_module_answers_a_hub_process_from_a_layout_file_reread_on_every_call(tmp_path):
    layout_file = tmp_path / "nvml.json"

    def write(layout):
        tmp_path.joinpath("next.json").write_text(json.dumps(layout))
        os.replace(tmp_path / "next.json", layout_file)

    write({"gpus": [gpu(utilization=37, gpm="NotSupported")]})
    env = {**os.environ, "PYTHONPATH": f"{STANDIN}{os.pathsep}{REPO}", "GPUHUB_FAKE_NVML": str(layout_file)}
    hub = subprocess.Popen(
        [sys.executable, "-c", STANDIN_SCRIPT], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        first = hub.stdout.readline().split()
        write({"gpus": [gpu(utilization=0, gpm="NotSupported")]})
        hub.stdin.write("\n")
        hub.stdin.flush()
        second = hub.stdout.readline().split()
        hub.stdin.write("\n")
        hub.stdin.close()
        assert hub.wait(timeout=30) == 0
    finally:
        if hub.poll() is None:
            hub.kill()
    assert first == ["37", "37.0", "utilization"]
    assert second == ["0", "0.0", "utilization"]


def test_the_standin_module_refuses_to_load_without_a_layout_file():
    env = {k: v for k, v in os.environ.items() if k != "GPUHUB_FAKE_NVML"} | {"PYTHONPATH": str(STANDIN)}
    run = subprocess.run([sys.executable, "-c", "import pynvml"], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode != 0 and "set GPUHUB_FAKE_NVML" in run.stderr
