import pytest

from spawner import container
from spawner.container import ContainerConfigError, ContainerPlan


def plan(**overrides) -> ContainerPlan:
    fields = dict(
        hub_id="gpuhub",
        username="alice",
        server_name="",
        home_volume="jupyterhub-user-alice",
        home_path="/home/jovyan",
        user="1000:100",
        mem_limit=8 * 1024**3,
        shm_size="2G",
        pids_limit=4096,
    )
    fields.update(overrides)
    return ContainerPlan(**fields)


def test_home_volume_is_mounted_at_the_home_path():
    assert container.binds(plan())["jupyterhub-user-alice"] == {"bind": "/home/jovyan", "mode": "rw"}
    assert container.binds(plan(home_path="/home/student"))["jupyterhub-user-alice"]["bind"] == "/home/student"


def test_course_binds_join_the_home():
    course = {"gpuhub-course-x": {"bind": "/opt/gpuhub/courses/x", "mode": "ro"}}
    binds = container.binds(plan(binds=course))
    assert binds["gpuhub-course-x"] == {"bind": "/opt/gpuhub/courses/x", "mode": "ro"}
    assert "jupyterhub-user-alice" in binds


def test_containers_are_hardened():
    config = container.host_config(plan())
    assert config["cap_drop"] == ["ALL"]
    assert config["security_opt"] == ["no-new-privileges:true"]
    assert config["privileged"] is False
    assert container.create_kwargs(plan())["user"] == "1000:100"


def test_gpuhub_removes_containers_itself_even_when_the_admin_asks_docker_to():
    assert container.host_config(plan(), {"auto_remove": True})["auto_remove"] is False


def test_limits_are_applied_and_swap_cannot_exceed_memory():
    config = container.host_config(plan())
    assert config["memswap_limit"] == 8 * 1024**3
    assert config["shm_size"] == "2G"
    assert config["pids_limit"] == 4096


def test_no_swap_cap_when_no_memory_limit_is_configured():
    assert "memswap_limit" not in container.host_config(plan(mem_limit=None))


@pytest.mark.parametrize(
    "extra",
    [
        {"privileged": True},
        {"cap_add": ["SYS_ADMIN"]},
        {"device_requests": []},
        {"security_opt": []},
        {"devices": ["/dev/nvidia0:/dev/nvidia0:rwm"]},
        {"runtime": "runc"},
    ],
)
def test_extra_host_config_cannot_undo_hardening(extra):
    with pytest.raises(ContainerConfigError, match="may not set"):
        container.host_config(plan(), extra)


def test_extra_host_config_may_add_harmless_settings():
    config = container.host_config(plan(), {"ulimits": [{"Name": "nofile", "Soft": 1, "Hard": 2}]})
    assert config["ulimits"][0]["Name"] == "nofile"


def test_the_admin_may_change_shm_and_pids_but_not_the_hardening():
    config = container.host_config(plan(), {"shm_size": "8G", "pids_limit": 100})
    assert (config["shm_size"], config["pids_limit"]) == ("8G", 100)
    assert config["cap_drop"] == ["ALL"]


@pytest.mark.parametrize(
    "binds",
    [
        {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        {"/run/docker.sock": {"bind": "/tmp/d.sock", "mode": "ro"}},
    ],
)
def test_the_docker_socket_is_never_mounted(binds):
    with pytest.raises(ContainerConfigError, match="Docker socket"):
        container.binds(plan(binds=binds))
    with pytest.raises(ContainerConfigError, match="Docker socket"):
        container.host_config(plan(), {"binds": binds})


def test_the_docker_socket_is_refused_in_mounts_too():
    with pytest.raises(ContainerConfigError, match="Docker socket"):
        container.host_config(plan(), {"mounts": [{"Source": "/var/run/docker.sock", "Target": "/s", "Type": "bind"}]})
    with pytest.raises(ContainerConfigError, match="Docker socket"):
        container.refuse_docker_socket(["/var/run/docker.sock/"])


@pytest.mark.parametrize("user", ["0", "root", "0:0", "root:100", ""])
def test_root_is_refused(user):
    with pytest.raises(ContainerConfigError, match="root"):
        container.create_kwargs(plan(user=user))


def test_labels_let_the_hub_find_its_containers():
    labels = container.create_kwargs(plan(server_name="big", devices=("GPU-a", "MIG-b"), profile="a100"))["labels"]
    assert labels == {
        container.LABEL_HUB: "gpuhub",
        container.LABEL_USER: "alice",
        container.LABEL_SERVER: "big",
        container.LABEL_DEVICES: "GPU-a,MIG-b",
        container.LABEL_QUOTA: "",
        container.LABEL_LEASE: "",
        container.LABEL_PROFILE: "a100",
    }
    # The names other hubs and older releases read: changing one orphans running containers.
    assert sorted(labels) == [
        "gpuhub.devices",
        "gpuhub.hub",
        "gpuhub.lease",
        "gpuhub.profile",
        "gpuhub.quota",
        "gpuhub.server",
        "gpuhub.user",
    ]


def test_a_container_without_gpus_sees_none_even_under_the_nvidia_runtime():
    assert container.environment({}, ())["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert container.host_config(plan())["device_requests"] == []


def test_users_cannot_choose_their_gpus_through_the_environment():
    env = {"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "0,1", "HOME": "/home/jovyan"}
    result = container.environment(env, ("GPU-a",))
    assert result["NVIDIA_VISIBLE_DEVICES"] == "GPU-a"
    assert "CUDA_VISIBLE_DEVICES" not in result
    assert result["HOME"] == "/home/jovyan"


def test_granted_devices_become_one_nvidia_device_request_by_uuid():
    config = container.host_config(plan(devices=("GPU-a", "GPU-b")))
    assert config["device_requests"] == [
        {"driver": "nvidia", "device_ids": ["GPU-a", "GPU-b"], "capabilities": [["gpu"]]}
    ]


@pytest.mark.parametrize("key", ["user", "labels", "environment", "host_config"])
def test_extra_create_kwargs_cannot_change_user_labels_or_environment(key):
    with pytest.raises(ContainerConfigError, match=key):
        container.create_kwargs(plan(), {key: "0"})


def test_extra_create_kwargs_may_add_harmless_settings():
    assert container.create_kwargs(plan(), {"working_dir": "/tmp"})["working_dir"] == "/tmp"


def test_building_twice_gives_equal_results_and_does_not_mutate_inputs():
    extra = {"binds": {"data": {"bind": "/data", "mode": "ro"}}}
    assert container.host_config(plan(), extra) == container.host_config(plan(), extra)
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


@pytest.mark.parametrize("source", ["/var/run", "/run/", "/var", "/", "/home/x/docker.sock"])
def test_a_host_folder_holding_the_docker_socket_is_refused(source):
    with pytest.raises(ContainerConfigError, match="Docker socket"):
        container.refuse_docker_socket([source])


@pytest.mark.parametrize("source", ["var", "run", "jupyterhub-user-a", "/srv/run", "/var/lib/data"])
def test_volume_names_and_other_host_folders_pass(source):
    container.refuse_docker_socket([source])


def test_volumes_from_and_list_binds_are_refused():
    with pytest.raises(ContainerConfigError, match="volumes_from"):
        container.host_config(plan(), {"volumes_from": ["gpuhub-hub"]})
    with pytest.raises(ContainerConfigError, match="mapping"):
        container.host_config(plan(), {"binds": ["/srv/x:/x:rw"]})
