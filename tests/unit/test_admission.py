"""Admission: options, profiles, courses, host and quotas in; one frozen plan or a one-line refusal out."""

import dataclasses

import pytest

from spawner import admission, courses, profiles, quota
from spawner.admission import Refusal, SpawnPlan, Usage

PROFILES = profiles.parse(
    [
        {"slug": "cpu", "display_name": "CPU", "default": True},
        {"slug": "mig", "display_name": "1 slice", "gpu": {"count": 1, "mig_profile": "1g.10gb"}},
        {"slug": "gpu", "display_name": "1 GPU", "gpu": {"count": 1}, "image": "lab/cuda:1"},
        {"slug": "gpu2", "display_name": "2 GPUs", "gpu": {"count": 2}},
    ]
)
STUDENTS = {"profiles": ["cpu", "mig", "gpu"], "max_devices_per_user": 1, "max_devices_per_group": 2}


def admit(options=None, groups=None, usage=None, usable=lambda r: 8, default=None, config_groups=None):
    return admission.admit(
        username="ann",
        user_options=options if options is not None else {"profile": "gpu"},
        profile_list=PROFILES,
        default_image="gpuhub/notebook:latest",
        home_path="/home/student",
        quota_default=default if default is not None else {"profiles": ["cpu"]},
        quota_groups=config_groups if config_groups is not None else {"students": STUDENTS},
        user_groups=groups if groups is not None else {"students": {}},
        usage=usage or Usage(),
        usable=usable,
    )


def test_an_allowed_gpu_profile_becomes_one_frozen_plan():
    plan = admit()
    assert isinstance(plan, SpawnPlan)
    assert (plan.profile.slug, plan.image, plan.request.count, plan.charged_to) == ("gpu", "lab/cuda:1", 1, "students")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.image = "other"


def test_a_cpu_profile_takes_the_configured_image_and_no_devices():
    plan = admit({"profile": "cpu"})
    assert plan.request is None and plan.devices_needed == 0 and plan.image == "gpuhub/notebook:latest"


@pytest.mark.parametrize(
    "options, status, words",
    [
        ({"profile": "gpu", "image": "evil"}, 400, "unknown server option(s): image"),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, 400, "unknown server option(s): NVIDIA_VISIBLE_DEVICES"),
        ({"profile": ["gpu"]}, 400, "must be a profile name"),
        ({"profile": "gpu99"}, 400, "unknown profile 'gpu99'"),
        ({"profile": "gpu2"}, 403, "does not include the profile 'gpu2'"),
    ],
)
def test_bad_options_are_refused_in_one_line(options, status, words):
    refusal = admit(options)
    assert isinstance(refusal, Refusal) and refusal.status == status and words in refusal.message
    assert "\n" not in refusal.message


def test_the_per_user_and_group_limits_count_what_is_held_and_waited_for():
    assert "your limit is 1" in admit(usage=Usage(user=1)).message
    refusal = admit(usage=Usage(by_quota={"students": 2}))
    assert refusal.status == 403 and "students (2 of 2 in use)" in refusal.message


def test_a_profile_the_host_cannot_serve_now_is_refused_with_503():
    refusal = admit({"profile": "mig"}, usable=lambda r: 0)
    assert refusal.status == 503 and "asks for 1g.10gb but this host has 0" in refusal.message


def test_a_malformed_group_quota_grants_nothing_and_the_refusal_says_why():
    refusal = admit(groups={"students": {quota.PROPERTY: {"max_devices_per_user": "lots"}}})
    assert refusal.status == 403 and "ignored:" in refusal.message and "max_devices_per_user" in refusal.message


def test_the_plan_queues_at_the_priority_of_the_quota_it_is_charged_to():
    config = {
        "students": {"profiles": "*", "priority": 0},
        "researchers": {"profiles": "*", "max_devices_per_group": 4, "priority": 10},
    }
    groups = {"students": {}, "researchers": {}}
    assert admit(groups=groups, config_groups=config).priority == 10
    full = admit(groups=groups, config_groups=config, usage=Usage(by_quota={"researchers": 4}))
    assert (full.charged_to, full.priority) == ("students", 0)


def test_a_course_groups_profile_is_the_default_and_its_sync_is_in_the_plan():
    course = {courses.PROPERTY: {"source": {"git": "https://example.org/ml.git"}, "profile": "mig"}}
    plan = admit({}, groups={"students": {}, "course-ml101": course})
    assert plan.profile.slug == "mig" and plan.courses.sync[0]["name"] == "ml101"


def test_the_form_offers_only_allowed_profiles_the_host_can_serve():
    offered = admission.offered(
        PROFILES, {"profiles": ["cpu"]}, {"students": STUDENTS}, {"students": {}}, lambda r: 0 if r.mig_profile else 4
    )
    assert [p.slug for p in offered] == ["cpu", "gpu"]


@pytest.mark.parametrize(
    "options, groups, wanted",
    [
        ({"profile": "gpu2"}, {"students": {}}, 2),  # what the budget must pay for, before the quota's say
        ({"profile": "cpu"}, {"students": {}}, 0),
        ({}, {"students": {}}, 0),  # the default profile
        ({}, {"course-ml101": {courses.PROPERTY: {"source": {"git": "https://x/ml.git"}, "profile": "gpu"}}}, 1),
        ({"profile": "gpu99"}, {}, 0),  # refused by admit, with its reason
        ({"profile": ["gpu"]}, {}, 0),
    ],
)
def test_devices_wanted_follows_the_profile_admit_chooses(options, groups, wanted):
    got = admission.devices_wanted(
        username="ann", user_options=options, profile_list=PROFILES, user_groups=groups, home_path="/home/student"
    )
    assert got == wanted
