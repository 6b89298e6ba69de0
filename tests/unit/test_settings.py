import pathlib

import pytest

from spawner import settings

GOOD = {
    "GPUHUB_SHARED_PASSWORD": "student-pass",
    "GPUHUB_ADMIN_PASSWORD": "a" * 32,
}


def test_defaults_fill_everything_but_the_passwords():
    values = settings.load(GOOD)
    assert values["GPUHUB_MEM_LIMIT"] == "8G"
    assert values["GPUHUB_CPU_LIMIT"] is None
    assert values["GPUHUB_ADMIN_USERS"] == ["admin"]
    assert values["GPUHUB_IDLE_TIMEOUT"] == 3600
    assert values["GPUHUB_PORT"] == 8000


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("GPUHUB_MEM_LIMIT", "lots", "size"),
        ("GPUHUB_MEM_LIMIT", "0G", "larger than zero"),
        ("GPUHUB_SHM_SIZE", "2 gigs", "size"),
        ("GPUHUB_CPU_LIMIT", "-1", "positive"),
        ("GPUHUB_PORT", "70000", "port"),
        ("GPUHUB_PIDS_LIMIT", "many", "invalid"),
        ("GPUHUB_NETWORK", "my net", "Docker object name"),
        ("GPUHUB_NOTEBOOK_IMAGE", "Bad Image", "image"),
        ("GPUHUB_ADMIN_USERS", "Alice,bob", "lower-case"),
        ("GPUHUB_AUTH", "magic", "shared-password"),
        ("GPUHUB_LOG_LEVEL", "chatty", "DEBUG"),
    ],
)
def test_a_malformed_setting_is_named_in_one_line(name, value, words):
    with pytest.raises(settings.SettingsError) as e:
        settings.load({**GOOD, name: value})
    message = str(e.value)
    assert message.startswith(name)
    assert words in message
    assert "\n" not in message


def test_a_missing_required_setting_is_named():
    with pytest.raises(settings.SettingsError, match=r"^GPUHUB_SHARED_PASSWORD is not set"):
        settings.load({"GPUHUB_ADMIN_PASSWORD": "a" * 32})
    with pytest.raises(settings.SettingsError, match=r"^GPUHUB_ADMIN_PASSWORD is not set"):
        settings.load({"GPUHUB_SHARED_PASSWORD": "student-pass", "GPUHUB_ADMIN_PASSWORD": ""})


def test_a_bad_password_is_refused_without_echoing_it():
    with pytest.raises(settings.SettingsError) as e:
        settings.load({**GOOD, "GPUHUB_ADMIN_PASSWORD": "tooshort-secret"})
    assert "tooshort-secret" not in str(e.value)
    assert "at least 32" in str(e.value)


def test_admin_and_user_passwords_must_differ():
    with pytest.raises(settings.SettingsError, match="must differ"):
        settings.load({"GPUHUB_SHARED_PASSWORD": "b" * 32, "GPUHUB_ADMIN_PASSWORD": "b" * 32})


@pytest.mark.parametrize("text, expected", [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("1.5g", int(1.5 * 2**30))])
def test_sizes_use_dockers_units(text, expected):
    assert settings.parse_size(text) == expected


def test_readme_documents_every_setting_and_env_example_lists_them():
    root = pathlib.Path(__file__).parents[2]
    readme = (root / "README.md").read_text()
    example = (root / ".env.example").read_text()
    assert settings.markdown_table() in readme, "README's settings table is stale: paste markdown_table()"
    for s in settings.SETTINGS:
        if s.name not in (
            "GPUHUB_DATA_DIR",
            "GPUHUB_HUB_CONNECT_IP",
            "GPUHUB_NETWORK",
            "GPUHUB_PORT",
            "GPUHUB_HUB_PORT",
            "GPUHUB_PROXY_API_PORT",
        ):  # fixed by docker-compose.yml
            assert f"\n{s.name}=" in example, f"{s.name} missing from .env.example"
