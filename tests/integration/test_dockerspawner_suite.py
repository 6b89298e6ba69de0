"""dockerspawner's own test suite (from the pinned version's source distribution) passes
against GPUDockerSpawner bound as DockerSpawner, but for the deviations listed, with their
reasons, in tests/dockerspawner_suite/plugin.py."""

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import dockerspawner
import pytest

from tests.dockerspawner_suite import deviations

ROOT = Path(__file__).resolve().parents[2]
SDIST_DIR = ROOT / ".tools" / "dockerspawner-sdist"
SUITE = ("tests/test_dockerspawner.py", "tests/test_deprecations.py")
#: Ours: the DockerSpawner settings the suite leaves out, and what gpuhub adds (tests named test_gpuhub_).
CONTRACT = ROOT / "tests" / "dockerspawner_suite" / "test_contract.py"

pytestmark = pytest.mark.docker


def suite_files(dest: Path) -> list[Path]:
    sdist = SDIST_DIR / f"dockerspawner-{dockerspawner.__version__}.tar.gz"
    assert sdist.exists(), f"{sdist} is missing: `make dev-deps` downloads it"
    files = []
    with tarfile.open(sdist) as tar:
        for name in SUITE:
            member = tar.getmember(f"dockerspawner-{dockerspawner.__version__}/{name}")
            target = dest / Path(name).name
            target.write_bytes(tar.extractfile(member).read())
            files.append(target)
    return files


def run_suite(tmp_path: Path, test_image: str, spawner: str) -> tuple[dict[str, str], str]:
    """Run the suite with DockerSpawner bound to `spawner` ("gpuhub" or "stock"): test name -> outcome."""
    suite = tmp_path / spawner
    suite.mkdir()
    files = [*suite_files(suite), CONTRACT]
    report = suite / "report.xml"
    env = {
        **os.environ,
        "GPUHUB_TEST_IMAGE": test_image,
        "GPUHUB_DSSUITE_SPAWNER": spawner,
        "PYTHONPATH": str(ROOT),
    }
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", *map(str, files),
            "-p", "tests.dockerspawner_suite.plugin", "-p", "asyncio",
            # The suite's own settings (its pyproject.toml, not in the sdist's tests/).
            "-o", "asyncio_mode=auto",
            "-o", "asyncio_default_fixture_loop_scope=module",
            "-o", "asyncio_default_test_loop_scope=module",
            "-o", "addopts=", "--rootdir", str(suite), "-p", "no:cacheprovider",
            "-W", "ignore::pytest.PytestUnknownMarkWarning",
            f"--junitxml={report}", "-q", "-rA",
        ],
        cwd=suite, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    tail = f"[{spawner}] exit {run.returncode}\n" + run.stdout[-6000:] + run.stderr[-2000:]
    assert report.exists(), tail
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        skipped = case.find("skipped")
        if skipped is not None and skipped.get("type") == "pytest.xfail":
            kinds = ["xfail"]
        outcomes[case.get("name")] = kinds[0] if kinds else "passed"
    return outcomes, tail


def test_dockerspawners_own_suite_passes_against_gpudockerspawner(tmp_path, test_image):
    stock, stock_log = run_suite(tmp_path, test_image, "stock")
    ours, log = run_suite(tmp_path, test_image, "gpuhub")

    # The baseline: stock DockerSpawner passes the whole suite here, deviations included, so
    # every failure below is GPUDockerSpawner's and not the suite's or this host's.
    def gpuhub_only(name):
        return name.startswith("test_gpuhub_")

    def needs_registry(name):
        return name.split("[")[0] in deviations.NEEDS_REGISTRY

    assert {n for n, o in stock.items() if o != "passed"} == {
        n for n in stock if needs_registry(n) or gpuhub_only(n)
    }, stock_log
    assert set(ours) == set(stock), log
    expected = {
        n: "xfail" if n in deviations.DEVIATIONS else "skipped" if needs_registry(n) else "passed" for n in stock
    }
    assert ours == expected, log
    assert sum(o == "passed" for o in ours.values()) >= 40, log  # 31 of dockerspawner 14.0.0's, 12 of ours
