"""Who stopped a server decides its end reason: the owner, the idle culler, or someone else."""

import pytest

from spawner import budget, stop_reasons


@pytest.mark.parametrize(
    "kind, caller, user, reason",
    [
        ("user", "ann", "ann", "user"),  # the Stop button, or ann's own token
        ("user", "lab-lee", "ann", "admin"),  # an admin page, a lab admin, an instructor
        ("service", "idle-culler", "ann", "idle"),
        ("service", "gpuhub-operations", "ann", None),  # gpuhub's limits note their own reason
        ("service", "some-script", "ann", "admin"),
    ],
)
def test_the_end_reason_follows_the_caller(kind, caller, user, reason):
    assert stop_reasons.reason_for(kind, caller, user) == reason


def test_the_routes_are_jupyterhubs_own_server_delete_routes():
    from jupyterhub.apihandlers import default_handlers

    theirs = {route for route, handler, *_ in default_handlers if handler.__name__ == "UserServerAPIHandler"}
    assert {route for route, _ in stop_reasons.handlers()} == theirs


def test_a_limit_longer_than_a_year_is_refused_in_one_line():
    with pytest.raises(budget.BudgetError, match=r"^profile 'x': max_runtime must be at most 365d, got '400d'$"):
        budget.duration("400d", "profile 'x': max_runtime")
    assert budget.duration("365d", "x") == 365 * 86400
