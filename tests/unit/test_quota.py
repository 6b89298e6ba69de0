import pytest

from spawner import quota
from spawner.quota import DEFAULT_SOURCE, QuotaError

CONFIG_GROUPS = {
    "students": {"profiles": ["cpu", "mig"], "max_devices_per_user": 1, "max_devices_per_group": 3},
    "researchers": {"profiles": "*", "max_devices_per_user": 4, "priority": 10},
}
DEFAULT = {"profiles": ["cpu"]}


def quotas(groups, default=DEFAULT):
    found, problems = quota.quotas_for(default, CONFIG_GROUPS, groups)
    assert problems == []
    return found


def test_the_default_quota_applies_to_users_in_no_group():
    qs = quotas({})
    assert quota.decide(qs, "cpu", 0, 0, {}).allowed
    d = quota.decide(qs, "mig", 1, 0, {})
    assert not d.allowed and d.reason == "your quota does not include the profile 'mig'"


def test_a_student_may_hold_one_device():
    qs = quotas({"students": None})
    ok = quota.decide(qs, "mig", 1, 0, {})
    assert ok.allowed and ok.charged_to == "students"
    over = quota.decide(qs, "mig", 1, 1, {"students": 1})
    assert not over.allowed
    assert over.reason == "you hold 1 GPU device(s); this profile needs 1 more and your limit is 1"


def test_a_full_group_refuses_with_its_usage():
    d = quota.decide(quotas({"students": None}), "mig", 1, 0, {"students": 3})
    assert not d.allowed and d.reason == "group GPU limit reached: students (3 of 3 in use)"


def test_several_groups_combine_to_the_most_generous():
    qs = quotas({"students": None, "researchers": None})
    d = quota.decide(qs, "mig", 1, 2, {"students": 3})
    assert d.allowed and d.charged_to == "researchers" and d.priority == 10
    assert quota.decide(qs, "gpu-x2", 2, 2, {}).allowed
    assert not quota.decide(qs, "gpu-x2", 2, 3, {}).allowed


def test_runtime_group_properties_override_config_key_by_key():
    qs = quotas({"students": {"max_devices_per_user": 2}})
    student = next(q for q in qs if q.source == "students")
    assert student.max_devices_per_user == 2 and student.profiles == {"cpu", "mig"}


def test_a_group_only_known_at_runtime_gets_a_quota():
    qs = quotas({"course-ml101": {"profiles": ["mig"], "max_devices_per_group": 40}})
    assert quota.decide(qs, "mig", 1, 0, {}).charged_to == "course-ml101"


@pytest.mark.parametrize(
    "value, words",
    [
        ({"max_devices_per_user": "two"}, "max_devices_per_user must be a whole number"),
        ({"max_devices_per_user": -1}, "max_devices_per_user"),
        ({"profiles": "mig"}, "profiles must be a list"),
        ({"priority": 1e9}, "priority"),
        ({"gpus": 3}, "unknown keys: gpus"),
        ("lots", "must be a mapping"),
    ],
)
def test_a_malformed_group_property_grants_nothing_and_says_why(value, words):
    found, problems = quota.quotas_for(DEFAULT, CONFIG_GROUPS, {"students": value})
    assert [q.source for q in found] == [DEFAULT_SOURCE]
    assert len(problems) == 1 and words in problems[0] and "group 'students'" in problems[0]


def test_malformed_config_raises():
    with pytest.raises(QuotaError, match="c.GPUQuota.default"):
        quota.quotas_for({"profiles": 3}, {}, {})


def test_an_empty_default_allows_everything_without_limits():
    qs = quotas({}, default={})
    assert quota.decide(qs, "anything", 8, 100, {}).allowed
