import pytest

from spawner import container
from spawner.container import ContainerConfigError, ContainerPlan


def plan(**overrides) -> ContainerPlan:
    fields = dict(
        name="gpuhub-alice",
        image="gpuhub/notebook:latest",
        command=["jupyterhub-singleuser"],
        env={"JUPYTERHUB_USER": "alice"},
        network="gpuhub-users",
        port=8888,
        hub_id="gpuhub",
        username="alice",
        server_name="",
        home_volume="jupyterhub-user-alice",
        mem_limit="8G",
        cpu_limit=2.0,
        shm_size="2G",
        pids_limit=4096,
    )
    fields.update(overrides)
    return ContainerPlan(**fields)


def test_home_volume_is_mounted_at_the_home_path():
    config = container.host_config(plan())
    assert config["binds"]["jupyterhub-user-alice"] == {"bind": "/home/jovyan", "mode": "rw"}
    assert "/home/jovyan" in container.create_kwargs(plan())["volumes"]


def test_containers_are_hardened():
    config = container.host_config(plan())
    assert config["cap_drop"] == ["ALL"]
    assert config["security_opt"] == ["no-new-privileges:true"]
    assert config["privileged"] is False
    assert container.create_kwargs(plan())["user"] == "1000:100"


def test_limits_are_applied_and_swap_cannot_exceed_memory():
    config = container.host_config(plan())
    assert config["mem_limit"] == "8G" and config["memswap_limit"] == "8G"
    assert config["cpu_quota"] == 200_000 and config["cpu_period"] == 100_000
    assert config["shm_size"] == "2G"
    assert config["pids_limit"] == 4096


def test_no_cpu_or_memory_limit_when_none_is_configured():
    config = container.host_config(plan(mem_limit=None, cpu_limit=None))
    assert "mem_limit" not in config and "cpu_quota" not in config


@pytest.mark.parametrize(
    "extra", [{"privileged": True}, {"cap_add": ["SYS_ADMIN"]}, {"device_requests": []}, {"security_opt": []}]
)
def test_extra_host_config_cannot_undo_hardening(extra):
    with pytest.raises(ContainerConfigError, match="may not set"):
        container.host_config(plan(extra_host_config=extra))


def test_extra_host_config_may_add_harmless_settings():
    config = container.host_config(plan(extra_host_config={"ulimits": [{"Name": "nofile", "Soft": 1, "Hard": 2}]}))
    assert config["ulimits"][0]["Name"] == "nofile"


@pytest.mark.parametrize(
    "binds",
    [
        {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        {"/run/docker.sock": {"bind": "/tmp/d.sock", "mode": "ro"}},
    ],
)
def test_the_docker_socket_is_never_mounted(binds):
    with pytest.raises(ContainerConfigError, match="Docker socket"):
        container.host_config(plan(binds=binds))


def test_the_docker_socket_is_refused_in_mounts_too():
    with pytest.raises(ContainerConfigError, match="Docker socket"):
        container.host_config(plan(mounts=[{"Source": "/var/run/docker.sock", "Target": "/s", "Type": "bind"}]))


@pytest.mark.parametrize("user", ["0", "root", "0:0", "root:100", ""])
def test_root_is_refused(user):
    with pytest.raises(ContainerConfigError, match="root"):
        container.create_kwargs(plan(user=user))


def test_labels_let_the_hub_find_its_containers():
    labels = container.create_kwargs(plan(server_name="big", devices=("GPU-a", "MIG-b")))["labels"]
    assert labels == {
        "gpuhub.hub": "gpuhub",
        "gpuhub.user": "alice",
        "gpuhub.server": "big",
        "gpuhub.devices": "GPU-a,MIG-b",
        "gpuhub.quota": "",
        "gpuhub.lease": "",
    }


def test_a_container_without_gpus_sees_none_even_under_the_nvidia_runtime():
    kwargs = container.create_kwargs(plan())
    assert kwargs["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert container.host_config(plan())["device_requests"] == []


def test_users_cannot_choose_their_gpus_through_the_environment():
    env = {"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "0,1", "HOME": "/home/jovyan"}
    kwargs = container.create_kwargs(plan(env=env, devices=("GPU-a",)))
    assert kwargs["environment"]["NVIDIA_VISIBLE_DEVICES"] == "GPU-a"
    assert "CUDA_VISIBLE_DEVICES" not in kwargs["environment"]
    assert kwargs["environment"]["HOME"] == "/home/jovyan"


def test_granted_devices_become_one_nvidia_device_request_by_uuid():
    config = container.host_config(plan(devices=("GPU-a", "GPU-b")))
    assert config["device_requests"] == [
        {"driver": "nvidia", "device_ids": ["GPU-a", "GPU-b"], "capabilities": [["gpu"]]}
    ]


def test_extra_create_kwargs_cannot_change_user_or_labels():
    with pytest.raises(ContainerConfigError, match="user"):
        container.create_kwargs(plan(extra_create_kwargs={"user": "0"}))


def test_building_twice_gives_equal_results_and_does_not_mutate_inputs():
    extra = {"binds": {"data": {"bind": "/data", "mode": "ro"}}}
    p = plan(extra_host_config=extra)
    assert container.host_config(p) == container.host_config(p)
    assert extra == {"binds": {"data": {"bind": "/data", "mode": "ro"}}}


@pytest.mark.parametrize(
    "name, volume",
    [
        ("alice", "alice"),
        ("j.doe-2", "j.doe-2"),
        ("a_b", "a_5fb"),
        ("a@b.edu", "a_40b.edu"),
        ("zoë", "zo_c3_ab"),
    ],
)
def test_user_names_map_to_readable_distinct_volume_names(name, volume):
    assert container.volume_safe(name) == volume
