"""The console's JSON API against its own OpenAPI description, with schemathesis, on a real hub.

Generated requests (valid and invalid: odd names, bodies, query values) as a lab admin never get a
5xx; as a student, an instructor or nobody, every write is refused and changes nothing.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from spawner.console import openapi

from . import console_hub as ch
from .denials import DENIED

EXAMPLES = 25  # per operation and mode: the module stays within a few minutes
SCHEMA = schemathesis.openapi.from_dict(openapi.document(ch.CONSOLE))
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
WRITES = ("POST", "PUT", "DELETE", "PATCH")


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_image, test_network, chp_on_path):
    hub, provider = ch.start(tmp_path_factory.mktemp("console-api"), test_image)
    yield hub
    hub.stop()
    provider.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    return {user: ch.token(hub, user) for user in (ch.LAB_ADMIN, ch.TEACHER, ch.STUDENT)}


def fuzz(hub, token: str | None, mode, check) -> list[str]:
    """Run generated cases of every operation; `check(case, response)` returns a problem or None."""
    problems: list[str] = []
    base = f"{hub.url}{ch.CONSOLE}api"
    session = requests.Session()
    headers = {"Authorization": f"token {token}"} if token else {}

    for operation in OPERATIONS:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            response = case.call(base_url=base, session=session, headers=headers, timeout=30)
            problem = check(case, response)
            if problem:
                where = f"{case.method} {case.formatted_path} {case.query}"
                problems.append(f"{where} -> {response.status_code}: {problem}")

        run()
    return problems


def one_line_json_error(response) -> str | None:
    if response.status_code < 400:
        return None
    try:
        message = response.json()["message"]
    except (ValueError, KeyError, TypeError):
        return f"not a JSON error: {response.text[:200]!r}"
    return "a multi-line error" if "\n" in message or "Traceback" in message else None


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_generated_input_gets_a_5xx_or_a_stack_trace(hub, tokens, mode):
    before = hub.api("GET", "/groups").json()
    statuses: set[int] = set()

    def check(case, response):
        statuses.add(response.status_code)
        if response.status_code >= 500:
            return response.text[:300]
        return one_line_json_error(response)

    assert fuzz(hub, tokens[ch.LAB_ADMIN], mode, check) == []
    assert 400 in statuses or 404 in statuses  # the generated input reached the checks, not only sign-in
    if mode == schemathesis.GenerationMode.POSITIVE:
        assert 200 in statuses
    assert hub.api("GET", "/groups").json() == before  # made-up names: nothing anyone has was changed


@pytest.mark.parametrize("who", [ch.STUDENT, ch.TEACHER, None])
def test_every_write_needs_the_lab_admin_scope(hub, tokens, who):
    before = hub.api("GET", "/groups").json()
    writes: list[int] = []

    def check(case, response):
        if case.method.upper() in WRITES:
            writes.append(response.status_code)
            if response.status_code not in (401, 403):
                return "a write without custom:gpuhub:manage was not refused"
        elif who != ch.TEACHER and response.status_code not in (401, 403) and "openapi" not in case.path:
            return "a read without custom:gpuhub:view was not refused"
        return one_line_json_error(response)

    assert fuzz(hub, tokens.get(who), schemathesis.GenerationMode.POSITIVE, check) == []
    assert writes, "no write was generated"
    assert hub.api("GET", "/groups").json() == before
    DENIED.append(f"console API: {len(writes)} generated writes as {who or 'nobody'} -> 403")
