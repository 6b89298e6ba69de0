"""GPUHUB_HOME_SIZE: the setting, the home volume's create options, and what a start does with an
existing volume, a refusing engine or an unenforced limit. Docker is a stand-in here; the real engines
are in tests/integration/test_home_size.py."""

import logging

import docker.errors
import pytest
import requests
from tornado import web

from spawner import container, settings
from spawner.spawner import GPUDockerSpawner, _reason
from spawner.swarm_spawner import GPUSwarmSpawner

GOOD = {"GPUHUB_SHARED_PASSWORD": "student-pass", "GPUHUB_ADMIN_PASSWORD": "a" * 32}
NO_QUOTA = "create jupyterhub-user-ada: quota size requested but no quota support"


# --- the setting ---------------------------------------------------------------------------------
def test_unset_means_no_limit_and_a_size_is_kept_as_docker_reads_it():
    assert settings.load(GOOD)["GPUHUB_HOME_SIZE"] == ""
    assert settings.load({**GOOD, "GPUHUB_HOME_SIZE": " 10g "})["GPUHUB_HOME_SIZE"] == "10G"
    assert settings.load({**GOOD, "GPUHUB_HOME_SIZE": "1.5T"})["GPUHUB_HOME_SIZE"] == "1.5T"


@pytest.mark.parametrize(
    "value, words",
    [
        ("10 GB", "expected a size such as 10G"),
        ("-1", "expected a size such as 10G"),
        ("abc", "expected a size such as 10G"),
        ("10GiB", "expected a size such as 10G"),
        ("0", "at least 10M"),
        ("512", "at least 10M"),  # bytes: a slip for 512G
        ("9M", "at least 10M"),
    ],
)
def test_a_bad_size_is_refused_in_one_line_naming_the_setting(value, words):
    with pytest.raises(settings.SettingsError) as e:
        settings.load({**GOOD, "GPUHUB_HOME_SIZE": value})
    message = str(e.value)
    assert message.startswith(f"GPUHUB_HOME_SIZE={value!r} is invalid: ")
    assert words in message and "\n" not in message


def test_refused_on_swarm():
    with pytest.raises(settings.SettingsError, match=r"^GPUHUB_HOME_SIZE works with GPUHUB_BACKEND=docker only"):
        settings.load({**GOOD, "GPUHUB_HOME_SIZE": "10G", "GPUHUB_BACKEND": "swarm"})
    assert settings.load({**GOOD, "GPUHUB_BACKEND": "swarm"})["GPUHUB_HOME_SIZE"] == ""


def test_the_setting_sets_the_trait_and_the_trait_checks_like_the_setting():
    from traitlets.config import Config

    config = Config()
    settings.apply(config, settings.load({**GOOD, "GPUHUB_HOME_SIZE": "50m"}))
    assert config.GPUDockerSpawner.home_size == "50M"
    assert GPUDockerSpawner.class_traits()["home_size"].default_value == settings.load(GOOD)["GPUHUB_HOME_SIZE"]
    assert GPUDockerSpawner(user=User(), home_size="2g").home_size == "2G"
    with pytest.raises(Exception, match=r"home_size='lots' is invalid"):
        GPUDockerSpawner(user=User(), home_size="lots")


# --- the pure parts ----------------------------------------------------------------------------------
def test_a_home_volume_is_created_by_the_local_driver_with_the_size_option():
    assert container.home_volume_create("jupyterhub-user-ada", "10G") == {
        "name": "jupyterhub-user-ada",
        "driver": "local",
        "driver_opts": {"size": "10G"},
    }


def volume(options=None, driver="local"):
    return {"Name": "jupyterhub-user-ada", "Driver": driver, "Options": options}


def test_an_existing_volume_is_judged_by_its_own_size_option():
    assert container.home_volume_problem(volume({"size": "10G"}), "10G") == ""
    assert container.home_volume_problem(volume({"size": "10g"}), "10G") == ""
    assert container.home_volume_problem(volume({"size": "10240M"}), "10G") == ""
    unlimited = container.home_volume_problem(volume(None), "10G")
    assert "without a size" in unlimited and "NOT limited to 10G" in unlimited and "Home size limits" in unlimited
    assert "keeps the size it was created with (5G)" in container.home_volume_problem(volume({"size": "5G"}), "10G")
    assert container.home_volume_problem(volume({"size": "10GiB"}), "10G") == ""  # Docker's spellings
    assert container.home_volume_problem(volume({"size": "10 gb"}), "10G") == ""
    assert "keeps the size it was created with (lots)" in container.home_volume_problem(volume({"size": "lots"}), "10G")
    assert "'nfs' volume driver" in container.home_volume_problem(volume({"size": "10G"}, driver="nfs"), "10G")


def test_the_refusal_is_one_line_naming_the_setting_and_what_the_host_needs():
    line = container.home_size_refusal("50M", "quota size requested\nbut no quota support")
    assert line.startswith("GPUHUB_HOME_SIZE=50M: this Docker Engine cannot limit volume sizes")
    assert "XFS mounted with prjquota" in line and "quota size requested but no quota support" in line
    assert "\n" not in line


def test_docker_reasons_lose_the_volume_name_prefix():
    assert _reason(api_error(400, NO_QUOTA)) == "quota size requested but no quota support"
    assert _reason(docker.errors.DockerException("connection refused")) == "connection refused"


def test_the_limit_is_enforced_when_the_home_reports_the_quota_as_its_size():
    assert container.home_limit_enforced("12800 4096\n", "50M") is True  # 50 MiB
    assert container.home_limit_enforced("12801 4096", "50M") is True  # rounding up to a block
    assert container.home_limit_enforced("64000000 4096", "50M") is False  # the whole filesystem
    assert container.home_limit_enforced("stat: cannot read file system information", "50M") is None
    assert container.home_limit_enforced("", "50M") is None


# --- a start ---------------------------------------------------------------------------------------
class User:
    name = "ada"
    escaped_name = "ada"
    url = "/user/ada/"
    id = 1

    def __init__(self):
        self.settings, self.groups, self.db = {}, [], None


def api_error(status, explanation):
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError(explanation, response=response, explanation=explanation)


class FakeDocker:
    """Stands in for DockerSpawner.docker (docker-py APIClient calls in the spawner's thread pool)."""

    def __init__(self, volumes=None, create_error=None, inspect_error=None, statfs=b"12800 4096\n"):
        self.volumes = dict(volumes or {})
        self.create_error, self.inspect_error, self.statfs = create_error, inspect_error, statfs
        self.calls = []

    async def __call__(self, method, *args, **kwargs):
        self.calls.append(method)
        if method == "inspect_volume":
            if self.inspect_error:
                raise self.inspect_error
            if args[0] not in self.volumes:
                raise docker.errors.NotFound("no such volume")
            return self.volumes[args[0]]
        if method == "create_volume":
            if self.create_error:
                raise self.create_error
            made = {"Name": kwargs["name"], "Driver": kwargs["driver"], "Options": kwargs["driver_opts"]}
            return self.volumes.setdefault(kwargs["name"], made)
        if method == "exec_create":
            assert args[1] == [*container.HOME_STATFS_COMMAND, "/home/jovyan"] and kwargs["user"] == "1000:100"
            return {"Id": "exec1"}
        if method == "exec_start":
            return self.statfs
        raise AssertionError(method)


def spawner(fake, size="50M", cls=GPUDockerSpawner):
    s = cls(user=User(), home_size=size)
    s.docker = fake
    return s


def ensure(s):
    return s._ensure_home_volume()


async def test_a_missing_home_is_created_with_the_limit_before_anything_else():
    fake = FakeDocker()
    assert await ensure(spawner(fake)) is True
    assert fake.calls == ["inspect_volume", "create_volume"]
    assert fake.volumes["jupyterhub-user-ada"]["Options"] == {"size": "50M"}


async def test_no_limit_touches_nothing():
    fake = FakeDocker()
    assert await ensure(spawner(fake, size="")) is False
    assert fake.calls == []


async def test_an_existing_limited_home_is_used_as_it_is():
    fake = FakeDocker({"jupyterhub-user-ada": volume({"size": "50M"})})
    assert await ensure(spawner(fake)) is True
    assert fake.calls == ["inspect_volume"]


async def test_an_existing_unlimited_home_starts_and_the_hub_log_says_it_is_not_limited(caplog):
    fake = FakeDocker({"jupyterhub-user-ada": volume(None)})
    s = spawner(fake)
    with caplog.at_level(logging.WARNING, logger=s.log.name):
        assert await ensure(s) is False
    assert fake.calls == ["inspect_volume"]
    assert any("NOT limited to 50M" in r.getMessage() and "ada" in r.getMessage() for r in caplog.records)


async def test_an_engine_that_cannot_limit_refuses_the_start_in_one_line(caplog):
    s = spawner(FakeDocker(create_error=api_error(400, NO_QUOTA)))
    with pytest.raises(web.HTTPError) as e:
        await ensure(s)
    assert e.value.status_code == 500
    assert e.value.log_message.startswith("GPUHUB_HOME_SIZE=50M: this Docker Engine cannot limit volume sizes")
    assert "\n" not in e.value.log_message


@pytest.mark.parametrize(
    "fake",
    [
        FakeDocker(inspect_error=docker.errors.DockerException("connection refused")),
        FakeDocker(create_error=api_error(500, "create jupyterhub-user-ada: disk I/O error")),
    ],
)
async def test_an_engine_in_trouble_is_a_503_not_a_refusal(fake):
    with pytest.raises(web.HTTPError) as e:
        await ensure(spawner(fake))
    assert e.value.status_code == 503 and "GPUHUB_HOME_SIZE" not in e.value.log_message


async def test_a_limit_docker_does_not_enforce_is_an_error_in_the_hub_log(caplog):
    for statfs, logged in ((b"12800 4096\n", False), (b"64000000 4096\n", True), (b"", False)):
        s = spawner(FakeDocker(statfs=statfs))
        s.object_id = "c1"
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger=s.log.name):
            await s._check_home_limit()
        assert any("moby/moby#43891" in r.getMessage() for r in caplog.records) is logged


async def test_swarm_refuses_a_home_size_set_on_its_trait():
    fake = FakeDocker()
    with pytest.raises(web.HTTPError, match="not on Swarm"):
        await ensure(spawner(fake, cls=GPUSwarmSpawner))
    assert fake.calls == []
    assert await ensure(spawner(fake, size="", cls=GPUSwarmSpawner)) is False
