"""The notebook image's gpu-check and example notebooks on a real GPU, with the host's
own Python and PyTorch (no Docker there). Skipped where there is no CUDA GPU.

    PYTHONPATH=images/notebook/gpuhub python -m pytest tests/gpu -s
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "images" / "notebook" / "gpuhub"
EXAMPLES = ROOT / "images" / "notebook" / "examples"


def granted_uuids() -> str:
    pynvml = pytest.importorskip("pynvml")
    pynvml.nvmlInit()
    try:
        return ",".join(
            pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())
        )
    finally:
        pynvml.nvmlShutdown()


def env() -> dict:
    # What gpuhub gives a GPU container: NVIDIA_VISIBLE_DEVICES naming the granted UUIDs.
    return {
        **os.environ,
        "NVIDIA_VISIBLE_DEVICES": granted_uuids(),
        "PYTHONPATH": f"{LIB}:{os.environ.get('PYTHONPATH', '')}",
    }


def test_gpu_check_passes_and_reports_speed(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gpu_check", "--json", str(tmp_path / "r.json")],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    print("\n" + result.stdout + result.stderr)
    assert result.returncode == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["devices"] and report["matmul_tflops"]["bf16"] > report["matmul_tflops"]["fp32"]


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.ipynb")))
def test_example_notebook_runs_on_the_gpu(tmp_path, name, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for key, value in env().items():
        monkeypatch.setenv(key, value)
    shutil.copy(EXAMPLES / name, tmp_path / name)
    nb = nbformat.read(tmp_path / name, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    print(f"\n=== {name}")
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            print(out.get("text", "").rstrip())
