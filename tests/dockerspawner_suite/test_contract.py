"""Contract tests beside dockerspawner's own suite: the DockerSpawner settings the suite does not
exercise (volumes, mounts, links, templates, port bindings, async extras) reach Docker the same way
with GPUDockerSpawner as with stock DockerSpawner; the `test_gpuhub_` ones check what gpuhub adds.

Run by tests/integration/test_dockerspawner_suite.py in the suite's subprocess, twice: with
DockerSpawner bound to GPUDockerSpawner, and to stock DockerSpawner (where the gpuhub ones skip).
Docker is real for everything but the final create_container call, which is captured.
"""

from unittest import mock

import pytest
from dockerspawner import DockerSpawner
from jupyterhub.tests.utils import add_user
from tornado import web

from tests.dockerspawner_suite.plugin import STOCK

gpuhub_only = pytest.mark.skipif(STOCK, reason="what gpuhub adds; stock DockerSpawner has none of it")


async def created(app, name, **traits):
    """The create_container call the spawner makes, with `traits` set on it."""
    add_user(app.db, app, name=name)
    spawner = app.users[name].spawners[""]
    assert isinstance(spawner, DockerSpawner)
    for key, value in traits.items():
        setattr(spawner, key, value)
    calls = []
    original = spawner.docker

    async def capture(method, *args, **kwargs):
        if method == "create_container":
            calls.append(kwargs)
            return {"Id": "0" * 64}
        return await original(method, *args, **kwargs)

    with mock.patch.object(spawner, "docker", new=capture):
        await spawner.create_object()
    (kwargs,) = calls
    return kwargs, kwargs["host_config"]


async def test_templates_in_the_extras_are_rendered_per_user(dockerspawner_configured_app):
    # (a name without '-', which DockerSpawner's escaping writes as '-2d')
    kwargs, host = await created(
        dockerspawner_configured_app,
        "tmplann",
        extra_create_kwargs={"working_dir": "/work/{username}"},
        extra_host_config={"binds": {"/srv/data/{username}": {"bind": "/data", "mode": "ro"}}},
    )
    assert kwargs["working_dir"] == "/work/tmplann"
    assert "/srv/data/tmplann:/data:ro" in host["Binds"]


async def test_callable_and_async_extras_are_honoured(dockerspawner_configured_app):
    async def later(spawner):
        return {"ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]}

    kwargs, host = await created(
        dockerspawner_configured_app,
        "async-ann",
        extra_create_kwargs=lambda spawner: {"working_dir": f"/w/{spawner.user.name}"},
        extra_host_config=later,
    )
    assert kwargs["working_dir"] == "/w/async-ann"
    assert host["Ulimits"][0]["Name"] == "nofile"


async def test_volumes_read_only_volumes_and_mounts_reach_docker(dockerspawner_configured_app):
    kwargs, host = await created(
        dockerspawner_configured_app,
        "volann",
        volumes={"shared-{username}": "/shared"},
        read_only_volumes={"/srv/datasets": "/datasets"},
        mounts=[{"type": "tmpfs", "target": "/scratch", "source": ""}],
    )
    assert "shared-volann:/shared:rw" in host["Binds"] and "/srv/datasets:/datasets:ro" in host["Binds"]
    assert {"/shared", "/datasets"} <= set(kwargs["volumes"])
    assert [m["Target"] for m in host["Mounts"]] == ["/scratch"]


async def test_links_and_port_bindings_without_internal_ip(dockerspawner_configured_app):
    _, host = await created(
        dockerspawner_configured_app, "link-ann", links={"db": "db"}, use_internal_ip=False, host_ip="127.0.0.1"
    )
    assert host["Links"] == ["db:db"]
    assert list(host["PortBindings"].values())[0][0]["HostIp"] == "127.0.0.1"


@gpuhub_only
async def test_gpuhub_adds_home_hardening_and_no_gpus_outside_a_start(dockerspawner_configured_app):
    kwargs, host = await created(dockerspawner_configured_app, "plain-ann")
    assert kwargs["user"] == "1000:100"
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges:true"]
    assert not host.get("DeviceRequests") and kwargs["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert any(b.endswith(":/home/jovyan:rw") and b.startswith("gpuhub-dssuite-plain-ann") for b in host["Binds"])


@gpuhub_only
async def test_gpuhub_labels_keep_user_names_with_braces(dockerspawner_configured_app):
    kwargs, _ = await created(dockerspawner_configured_app, "br{username}ace")
    assert kwargs["labels"]["gpuhub.user"] == "br{username}ace"


@gpuhub_only
@pytest.mark.parametrize(
    "traits",
    [
        {"volumes": {"/var/run/docker.sock": "/var/run/docker.sock"}},
        {"read_only_volumes": {"/var/run": "/hostrun"}},
        {"extra_host_config": {"binds": ["/var/run/docker.sock:/d.sock:rw"]}},
        {"extra_host_config": {"volumes_from": ["gpuhub-hub"]}},
        {"extra_host_config": {"privileged": True}},
        {"extra_create_kwargs": {"user": "0"}},
    ],
)
async def test_gpuhub_refuses_what_would_undo_its_guarantees(dockerspawner_configured_app, traits):
    with pytest.raises(web.HTTPError) as e:
        await created(dockerspawner_configured_app, f"bad-{abs(hash(str(traits))) % 10**6}", **traits)
    assert e.value.status_code == 500 and "gpuhub configuration error" in e.value.log_message
