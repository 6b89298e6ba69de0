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


def test_the_database_setting_names_sqlite_postgres_or_a_url_of_ones_own():
    assert settings.database_url(settings.load(GOOD)) == "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
    # The compose profile's server, with the password quoted into the URL (psycopg2 is in the hub image).
    pg = settings.load({**GOOD, "GPUHUB_DATABASE": "postgres", "GPUHUB_POSTGRES_PASSWORD": "p@ss/word"})
    assert settings.database_url(pg) == "postgresql+psycopg2://gpuhub:p%40ss%2Fword@postgres/gpuhub"
    own = {**GOOD, "GPUHUB_DATABASE": "postgres", "GPUHUB_DB_URL": "postgresql+psycopg2://hub@db.lab/hub"}
    assert settings.database_url(settings.load(own)) == "postgresql+psycopg2://hub@db.lab/hub"
    with pytest.raises(settings.SettingsError, match="^GPUHUB_DATABASE=postgres needs GPUHUB_POSTGRES_PASSWORD"):
        settings.load({**GOOD, "GPUHUB_DATABASE": "postgres"})
    with pytest.raises(settings.SettingsError, match="^GPUHUB_DATABASE=postgres is the compose deployment's server"):
        settings.load(
            {**GOOD, "GPUHUB_DATABASE": "postgres", "GPUHUB_POSTGRES_PASSWORD": "x", "GPUHUB_BACKEND": "swarm"}
        )
    with pytest.raises(settings.SettingsError, match="^GPUHUB_DATABASE='mysql' is invalid"):
        settings.load({**GOOD, "GPUHUB_DATABASE": "mysql"})


def test_readme_documents_every_setting_and_env_example_lists_them():
    root = pathlib.Path(__file__).parents[2]
    admin_page = (root / "docs" / "admin.md").read_text()
    example = (root / ".env.example").read_text()
    assert settings.markdown_table() in admin_page, "docs/admin.md's settings table is stale: run `make readme`"
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


def test_every_trait_the_table_names_is_a_configurable_trait_and_apply_sets_it():
    from jupyterhub.app import JupyterHub
    from traitlets.config import Config

    from spawner import GPUDockerSpawner, GPUSwarmSpawner

    classes = {
        "JupyterHub": JupyterHub,
        "DockerSpawner": GPUDockerSpawner,
        "GPUDockerSpawner": GPUDockerSpawner,
        "GPUSwarmSpawner": GPUSwarmSpawner,
    }
    named = [s for s in settings.SETTINGS if s.trait]
    assert len(named) >= 10
    for s in named:
        section, name = s.trait.split(".")
        trait = classes[section].class_traits().get(name)
        assert trait is not None and trait.metadata.get("config"), f"{s.name}: {s.trait} is not a config trait"
    config = Config()
    values = settings.load({**GOOD, "GPUHUB_SHM_SIZE": "1g", "GPUHUB_NETWORK": "lab-net"})
    settings.apply(config, values)
    assert config.GPUDockerSpawner.shm_size == "1G" and config.DockerSpawner.network_name == "lab-net"
    # The trait's default is the table's: an unset setting and an untouched trait agree.
    assert GPUDockerSpawner.class_traits()["shm_size"].default_value == settings.load(GOOD)["GPUHUB_SHM_SIZE"]
    assert GPUDockerSpawner.class_traits()["pids_limit"].default_value == settings.load(GOOD)["GPUHUB_PIDS_LIMIT"]
