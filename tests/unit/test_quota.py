import pytest

from spawner import budget, quota
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


# GPU-hour budgets

BUDGETED_GROUPS = {
    "students": {"profiles": ["cpu", "mig"], "gpu_hours_per_user": "20/week"},
    "researchers": {"profiles": "*", "priority": 10, "gpu_hours_per_group": "500/month"},
}
STUDENTS_USED_UP = (
    "your GPU-hour budget is used up: 20.00 of 20 GPU-hours this week; it refills Mon 2026-11-30 00:00 UTC"
)
RESEARCHERS_USED_UP = (
    "group researchers's GPU-hour budget is used up: 500.00 of 500 GPU-hours this month;"
    " it refills Tue 2026-12-01 00:00 UTC"
)


def budgeted(groups=("students", "researchers")):
    found, problems = quota.quotas_for(DEFAULT, BUDGETED_GROUPS, {g: None for g in groups})
    assert problems == []
    return found


def test_budgets_parse_in_config_quotas_and_runtime_group_properties():
    found, problems = quota.quotas_for(
        {"gpu_hours_per_user": "2/day"},
        BUDGETED_GROUPS,
        {
            "students": {"gpu_hours_per_user": {"hours": 30, "period": "week"}},
            "researchers": None,
            "course-ml101": {"profiles": ["mig"], "gpu_hours_per_group": "0.5/day"},
            "staff": {"gpu_hours_per_user": None},
        },
    )
    assert problems == []
    by_source = {q.source: q for q in found}
    assert by_source[DEFAULT_SOURCE].budgets == {"user": budget.Budget(2, "day")}
    assert by_source["students"].budgets == {"user": budget.Budget(30, "week")}  # the property overrides config
    assert by_source["researchers"].budgets == {"group": budget.Budget(500, "month")}
    assert by_source["course-ml101"].budgets == {"group": budget.Budget(0.5, "day")}
    assert by_source["staff"].budgets == {}


@pytest.mark.parametrize(
    "value, words",
    [
        ("lots", "gpu_hours_per_user must be GPU-hours per period such as '20/week', got 'lots'"),
        ("20/fortnight", "gpu_hours_per_user: period must be one of day, week, month"),
        ({"hours": -5, "period": "week"}, "gpu_hours_per_user: hours must be a number >= 0"),
        (20, "gpu_hours_per_user must be GPU-hours per period"),
    ],
)
def test_a_malformed_budget_in_a_group_property_grants_nothing_and_says_why_in_one_line(value, words):
    found, problems = quota.quotas_for(DEFAULT, BUDGETED_GROUPS, {"students": {"gpu_hours_per_user": value}})
    assert [q.source for q in found] == [DEFAULT_SOURCE]
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith("quota of group 'students' (property 'gpuhub')") and words in problems[0]


def test_a_malformed_budget_in_config_raises_a_quota_error_in_one_line():
    with pytest.raises(QuotaError) as e:
        quota.quotas_for({"gpu_hours_per_group": "500/year"}, {}, {})
    assert str(e.value) == (
        "quota of c.GPUQuota.default: gpu_hours_per_group: period must be one of day, week, month, got 'year'"
    )


def test_a_quota_whose_budget_is_used_up_is_skipped_and_another_allowing_quota_is_charged():
    qs = budgeted()
    assert quota.decide(qs, "mig", 1, 0, {}).charged_to == "researchers"  # a group with priority goes first
    d = quota.decide(qs, "mig", 1, 0, {}, exhausted={"researchers": RESEARCHERS_USED_UP})
    assert d == quota.Decision(True, charged_to="students", priority=0)


def test_a_used_up_quota_that_does_not_allow_the_profile_changes_nothing():
    d = quota.decide(budgeted(), "gpu-x2", 2, 0, {}, exhausted={"students": STUDENTS_USED_UP})
    assert d.allowed and d.charged_to == "researchers"


def test_a_start_is_refused_with_the_budget_reasons_when_every_allowing_quota_is_used_up():
    d = quota.decide(
        budgeted(), "mig", 1, 0, {}, exhausted={"students": STUDENTS_USED_UP, "researchers": RESEARCHERS_USED_UP}
    )
    assert not d.allowed and d.charged_to == ""
    both = (STUDENTS_USED_UP, RESEARCHERS_USED_UP)
    assert d.reason in ("; ".join(both), "; ".join(reversed(both)))
    only = quota.decide(budgeted(["students"]), "mig", 1, 0, {}, exhausted={"students": STUDENTS_USED_UP})
    assert not only.allowed and only.reason == STUDENTS_USED_UP


def test_a_cpu_start_ignores_used_up_budgets():
    all_used_up = {"students": STUDENTS_USED_UP, "researchers": RESEARCHERS_USED_UP, DEFAULT_SOURCE: "x"}
    d = quota.decide(budgeted(), "cpu", 0, 0, {}, exhausted=all_used_up)
    assert d.allowed and d.charged_to == "researchers" and d.priority == 10


# --- the written form (GET /hub/api/gpuhub/quotas shows quotas as admins write them) ----------------


@pytest.mark.parametrize(
    "value",
    [
        {"profiles": ["mig", "cpu"], "max_devices_per_user": 1, "gpu_hours_per_user": "20/week"},
        {"profiles": "*", "max_devices_per_group": None, "priority": -3, "gpu_hours_per_group": "0.015/day"},
        {"gpu_hours_per_user": {"hours": 1234567, "period": "month"}, "gpu_hours_per_group": None},
        {},
    ],
)
def test_a_parsed_quota_written_back_parses_to_the_same_values(value):
    parsed = quota.parse(value, "test")
    assert quota.parse(quota.written(parsed), "test") == parsed
    assert set(quota.written(parsed)) == set(value)


def test_written_form_sorts_profiles_and_writes_budgets_as_admins_do():
    parsed = quota.parse({"profiles": ["mig", "cpu"], "gpu_hours_per_user": {"hours": 20.0, "period": "week"}}, "t")
    assert quota.written(parsed) == {"profiles": ["cpu", "mig"], "gpu_hours_per_user": "20/week"}


def test_a_whole_quota_written_shows_every_key_with_what_unset_means():
    assert quota.written_quota(quota.Quota(DEFAULT_SOURCE)) == {
        "profiles": "*",
        "max_devices_per_user": None,
        "max_devices_per_group": None,
        "priority": 0,
        "gpu_hours_per_user": None,
        "gpu_hours_per_group": None,
    }


def test_a_group_quota_is_its_config_overridden_key_by_key_by_its_property():
    q = quota.group_quota("students", {"profiles": ["cpu"], "max_devices_per_user": 1}, {"max_devices_per_user": 3})
    assert q.source == "students" and q.profiles == frozenset({"cpu"}) and q.max_devices_per_user == 3
    assert quota.group_quota("nobody", None, None) is None
    with pytest.raises(QuotaError, match="property 'gpuhub'"):
        quota.group_quota("students", {"priority": 1}, {"priority": "high"})
