"""The compose file and the Makefile honour every setting README lists, with the settings table's defaults."""

import re
from pathlib import Path

from spawner import settings

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {s.name: s.default for s in settings.SETTINGS}


def test_compose_defaults_are_the_settings_tables():
    compose = (ROOT / "docker-compose.yml").read_text()
    used = re.findall(r"\$\{(GPUHUB_[A-Z_]+):-([^}]*)\}", compose)
    listed = [(name, default) for name, default in used if name in DEFAULTS]
    assert {"GPUHUB_DATA_DIR", "GPUHUB_NETWORK", "GPUHUB_HUB_CONNECT_IP"} <= {n for n, _ in listed}
    for name, default in listed:
        assert default == DEFAULTS[name], (
            f"docker-compose.yml defaults {name} to {default!r}, the table to {DEFAULTS[name]!r}"
        )


def test_compose_never_pins_a_setting_over_the_settings_file():
    compose = (ROOT / "docker-compose.yml").read_text()
    for name in DEFAULTS:
        pinned = re.search(rf"^\s+{name}:\s*(?!\$\{{{name}[:}}])\S", compose, re.M)
        assert not pinned, f"docker-compose.yml sets {name} whatever the settings file says"


def test_the_makefile_reads_host_side_settings_from_the_settings_file():
    makefile = (ROOT / "Makefile").read_text()
    used = re.findall(r"\$\(call env_setting,(GPUHUB_[A-Z_]+),([^)]*)\)", makefile)
    assert ("GPUHUB_NETWORK", DEFAULTS["GPUHUB_NETWORK"]) in used
    # Settings only compose reads (images, volumes) have their defaults in docker-compose.yml.
    compose = dict(re.findall(r"\$\{(GPUHUB_[A-Z_]+):-([^}]*)\}", (ROOT / "docker-compose.yml").read_text()))
    for name, default in used:
        expected = DEFAULTS[name] if name in DEFAULTS else compose[name]
        assert default == expected, f"Makefile defaults {name} to {default!r}, the table/compose to {expected!r}"
    assert "gpuhub-users" not in makefile.replace("env_setting,GPUHUB_NETWORK,gpuhub-users", "")
