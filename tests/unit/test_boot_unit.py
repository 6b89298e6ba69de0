"""The boot unit as `make boot-install` writes it (scripts/install-boot-unit.sh, into a folder of
the test's own: no systemd is touched)."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def install(env_file: Path, unit_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "scripts" / "install-boot-unit.sh"), str(env_file), str(unit_dir)],
        capture_output=True,
        text=True,
    )


def test_the_unit_runs_make_boot_here_with_these_settings_after_docker(tmp_path):
    env = tmp_path / "gpuhub.env"
    env.write_text("GPUHUB_PUBLIC_PORT=8000\n")
    units = tmp_path / "units"
    units.mkdir()
    proc = install(env, units)
    assert proc.returncode == 0, proc.stderr
    unit = configparser.ConfigParser(strict=False)
    unit.read(units / "gpuhub.service")
    assert unit["Service"]["ExecStart"] == f"/usr/bin/make boot ENV_FILE={env}"
    assert unit["Service"]["WorkingDirectory"] == str(ROOT)
    assert unit["Unit"]["PartOf"] == "docker.service" and "docker.service" in unit["Unit"]["After"]
    text = (units / "gpuhub.service").read_text()
    assert "@ROOT@" not in text and "@ENV_FILE@" not in text


def test_a_missing_settings_file_is_refused_in_one_line(tmp_path):
    proc = install(tmp_path / "nope.env", tmp_path)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "make up" in proc.stderr
    assert not (tmp_path / "gpuhub.service").exists()
