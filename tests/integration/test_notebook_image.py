"""The notebook image (CPU test variant), run with real Docker, hardened like gpuhub runs it."""

import base64
import hashlib
import io
import json
import uuid
import zipfile

import jupyterhub
import pytest

HARDENED = dict(user="1000:100", cap_drop=["ALL"], security_opt=["no-new-privileges:true"], shm_size="1g")


def run(client, image, command, **kwargs):
    """Run `command` in the image to completion; return (exit code, output)."""
    c = client.containers.run(image, command, detach=True, **{**HARDENED, **kwargs})
    try:
        code = c.wait(timeout=600)["StatusCode"]
        return code, c.logs().decode(errors="replace")
    finally:
        c.remove(force=True)


@pytest.fixture
def home(docker_client):
    volume = docker_client.volumes.create(f"gpuhubtest-home-{uuid.uuid4().hex[:8]}")
    yield volume.name
    volume.remove(force=True)


def test_it_runs_as_jovyan_under_tini(docker_client, test_image):
    code, out = run(docker_client, test_image, ["sh", "-c", "id -u; id -g; cat /proc/1/comm; echo $HOME"])
    assert code == 0 and out.split() == ["1000", "100", "tini", "/home/jovyan"]
    config = docker_client.images.get(test_image).attrs["Config"]
    assert config["Entrypoint"][0] == "tini" and config["User"] == "1000:100"
    assert "NVIDIA_VISIBLE_DEVICES=void" in config["Env"], "GPU visibility must be left to the hub"
    assert config["Healthcheck"]["Test"][-1] == "/opt/gpuhub/lib/healthcheck.py"


def test_its_jupyterhub_singleuser_matches_the_hub(docker_client, test_image):
    code, out = run(docker_client, test_image, ["jupyterhub-singleuser", "--version"])
    assert code == 0 and out.strip() == jupyterhub.__version__


def test_the_scientific_stack_imports(docker_client, test_image):
    modules = "torch numpy pandas matplotlib ipywidgets nbgitpuller jupyterlab_nvdashboard gpustat nbclient"
    code, out = run(docker_client, test_image, ["python3", "-c", f"import {', '.join(modules.split())}; print('ok')"])
    assert code == 0 and out.strip().endswith("ok"), out
    code, out = run(docker_client, test_image, ["sh", "-c", "command -v git tmux gpu-check torchrun; ! command -v gcc"])
    assert code == 0, out


def test_gpu_check_says_cpu_only_and_succeeds_on_a_cpu_server(docker_client, test_image):
    code, out = run(docker_client, test_image, ["gpu-check"], environment={"NVIDIA_VISIBLE_DEVICES": "void"})
    assert code == 0, out
    assert "CPU only: no GPU was granted" in out and "AMP      autocast + GradScaler on cpu: OK" in out
    assert "gpu-check: OK" in out


def test_gpu_check_explains_a_granted_gpu_it_cannot_see(docker_client, test_image):
    code, out = run(
        docker_client, test_image, ["gpu-check"], environment={"NVIDIA_VISIBLE_DEVICES": "GPU-00000000-1111"}
    )
    assert code == 1
    assert "PROBLEM: GPUs were granted but this PyTorch is a CPU-only build" in out
    assert "Traceback" not in out


def test_the_example_notebooks_run_end_to_end(docker_client, test_image, home):
    script = (
        "set -e; gpuhub-start true; ls ~/examples; cd ~/examples; "
        "jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=600 "
        "--output-dir /tmp/out *.ipynb; "
        "python3 -c \"import json,glob; [print(o.get('text','')) "
        "for f in sorted(glob.glob('/tmp/out/*.ipynb')) "
        "for c in json.load(open(f))['cells'] for o in c.get('outputs',[])]\""
    )
    code, out = run(
        docker_client,
        test_image,
        ["bash", "-c", script],
        volumes={home: {"bind": "/home/jovyan"}},
        environment={"NVIDIA_VISIBLE_DEVICES": "void"},
        mem_limit="4g",
    )
    assert code == 0, out[-4000:]
    assert "num_workers=2" in out  # DataLoader worker processes need the larger /dev/shm
    assert "accuracy" in out and "DDP OK: 2 process(es) on gloo" in out
    assert "needs at least 2" in out


def test_examples_are_read_only_and_copied_into_home_on_first_start(docker_client, test_image, home):
    code, out = run(
        docker_client,
        test_image,
        ["sh", "-c", "touch /opt/gpuhub/examples/x 2>&1; gpuhub-start ls -l /home/jovyan/examples"],
        volumes={home: {"bind": "/home/jovyan"}},
    )
    assert "Permission denied" in out and "01-environment-check.ipynb" in out


def tiny_wheel() -> bytes:
    """A minimal pure-Python wheel, built here, so the test needs no package index."""
    files = {
        "gpuhub_tiny/__init__.py": b"VALUE = 42\n",
        "gpuhub_tiny-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: gpuhub-tiny\nVersion: 1.0\n",
        "gpuhub_tiny-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }

    def digest(data):
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},{digest(data)},{len(data)}\n" for name, data in files.items())
    record += "gpuhub_tiny-1.0.dist-info/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("gpuhub_tiny-1.0.dist-info/RECORD", record)
    return buf.getvalue()


def test_a_users_pip_install_lands_in_the_home_volume_and_survives(docker_client, test_image, home):
    wheel = base64.b64encode(tiny_wheel()).decode()
    install = (
        f"echo {wheel} | base64 -d > /tmp/gpuhub_tiny-1.0-py3-none-any.whl && "
        "pip install --no-index -q /tmp/gpuhub_tiny-1.0-py3-none-any.whl && "
        "python3 -c 'import gpuhub_tiny, json; print(json.dumps(gpuhub_tiny.__file__))'"
    )
    code, out = run(docker_client, test_image, ["bash", "-c", install], volumes={home: {"bind": "/home/jovyan"}})
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1]).startswith("/home/jovyan/.local/lib/")
    code, out = run(
        docker_client,
        test_image,
        ["python3", "-c", "import gpuhub_tiny; print(gpuhub_tiny.VALUE)"],
        volumes={home: {"bind": "/home/jovyan"}},
    )
    assert code == 0 and out.strip() == "42", out
