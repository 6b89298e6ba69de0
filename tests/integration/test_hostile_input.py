"""Hostile input against a real hub with two stand-in GPUs.

- schemathesis over the hub's REST API: JupyterHub's own published OpenAPI description
  (.tools/jupyterhub-rest-api.yml, from the installed version's sdist) plus gpuhub's endpoints
  (spawner/hub_openapi.py), valid and invalid requests, as a student and as a lab admin;
- Hypothesis over what a student sends to start a server: the REST API's `user_options` and the
  spawn form's POST;
- Hypothesis over group properties a lab admin can write (the `gpuhub` quota and `courses`
  properties, through JupyterHub's own endpoint, which checks nothing), followed by a member's start.

Verdicts: no response >= 500; every refusal is one line naming what was wrong (JSON for the API,
the form's error for the page); no lease leaked: afterwards no device is held, nobody is queued
and no notebook container is left. The number of cases run is printed (and in docs/results).
"""

from __future__ import annotations

import datetime
import json
import re
import time
from pathlib import Path

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from harness.hub import SHARED_PASSWORD
from spawner import hub_openapi

from . import console_hub as ch
from .browserless import UserSession

ROOT = Path(__file__).resolve().parents[2]
JUPYTERHUB_SPEC = ROOT / ".tools" / "jupyterhub-rest-api.yml"
EXAMPLES = 8  # per operation, mode and caller
NEVER = {("POST", "/shutdown")}  # would end the hub under test: not a finding
CASES: dict[str, int] = {}


def merged_schema() -> dict:
    if not JUPYTERHUB_SPEC.exists():
        pytest.fail(f"{JUPYTERHUB_SPEC} is missing: `make dev-deps` downloads it")
    spec = _standard_types(yaml.safe_load(JUPYTERHUB_SPEC.read_text()))
    ours = hub_openapi.document()
    overlap = set(spec["paths"]) & set(ours["paths"])
    assert not overlap, f"gpuhub's paths shadow JupyterHub's: {overlap}"
    spec["paths"].update(ours["paths"])
    return spec


def _standard_types(node):
    """YAML reads JupyterHub's unquoted example times as datetimes; JSON (and OpenAPI) has strings."""
    if isinstance(node, dict):
        return {k: _standard_types(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_standard_types(v) for v in node]
    if isinstance(node, (datetime.date, datetime.datetime)):
        return node.isoformat()
    return node


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_image, test_network, chp_on_path, docker_client):
    hub, provider = ch.start(tmp_path_factory.mktemp("hostile"), test_image)
    yield hub
    hub.stop()
    provider.stop()
    for c in docker_client.containers.list(all=True, filters={"label": "gpuhub.user"}):
        if c.labels.get("gpuhub.user", "").startswith("gpuhubt-"):
            c.remove(force=True)


@pytest.fixture(scope="module", autouse=True)
def report_cases():
    yield
    print("\nhostile input cases run: " + ", ".join(f"{k}: {v}" for k, v in CASES.items()))


@pytest.fixture(scope="module")
def tokens(hub):
    return {user: ch.token(hub, user) for user in (ch.LAB_ADMIN, ch.STUDENT, ch.COURSE_STUDENT)}


def problem_with(response, path: str = "") -> str | None:
    """None for an acceptable answer to a request for `path`; else what is wrong with it."""
    if response.status_code >= 500:
        return f"server error: {response.text[:300]!r}"
    if response.status_code < 400:
        return None
    try:
        body = response.json()
        message = body.get("message")
    except (ValueError, AttributeError):
        return f"a refusal that is not JSON: {response.text[:200]!r}"
    if path.startswith("/oauth2/") and isinstance(body.get("error"), str):
        message = body["error"]  # OAuth 2's own error format (RFC 6749 5.2), which its clients read
    if not isinstance(message, str) or not message.strip():
        return "a refusal without a message"
    if "\n" in message.strip() or "Traceback" in message:
        return "a multi-line refusal"
    return None


def test_a_bare_refusal_of_jupyterhub_s_own_api_says_what_was_refused(hub, tokens):
    r = requests.get(
        f"{hub.url}/hub/api/authorizations/token/0",
        headers={"Authorization": f"token {tokens[ch.LAB_ADMIN]}"},
        timeout=30,
    )
    assert r.status_code == 404 and r.json()["message"] == "Not Found: GET /hub/api/authorizations/token/0"


def assert_nothing_leaked(hub, tokens) -> None:
    """No device held, nobody queued (as the lab admin's console reads them)."""
    deadline = time.monotonic() + 60
    while True:
        devices = ch.hub_api(hub, tokens[ch.LAB_ADMIN], "GET", "/gpuhub/devices").json()
        held = [d for g in devices["gpus"] for d in g["devices"] if d["holder"]]
        queue = ch.hub_api(hub, tokens[ch.LAB_ADMIN], "GET", "/gpuhub/queue").json()["queue"]
        if not held and not queue:
            return
        assert time.monotonic() < deadline, f"leaked: held {held}, queued {queue}"
        time.sleep(1)


@pytest.mark.parametrize("caller", [ch.STUDENT, ch.LAB_ADMIN])
@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_the_rest_api_never_answers_5xx_and_every_refusal_says_why(hub, tokens, caller, mode):
    schema = schemathesis.openapi.from_dict(merged_schema())
    session = requests.Session()
    headers = {"Authorization": f"token {tokens[caller]}"}
    problems: list[str] = []
    statuses: dict[int, int] = {}
    cases = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NEVER:
            continue

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            nonlocal cases
            cases += 1
            response = case.call(base_url=f"{hub.url}/hub/api", session=session, headers=headers, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            problem = problem_with(response, case.path)
            if problem:
                problems.append(
                    f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: {problem}"
                )

        try:
            run()
        except Unsatisfiable:
            continue  # nothing to generate in this mode (no parameters that can be made invalid)
    CASES[f"REST API, {mode.value}, as {caller}"] = cases
    print(f"REST API {mode.value} as {caller}: {cases} cases, statuses {dict(sorted(statuses.items()))}")
    assert problems == [], "\n".join(problems[:30])
    assert cases > 100 and any(400 <= s < 500 for s in statuses)  # the input reached the checks
    assert hub.api("GET", "/").ok
    assert_nothing_leaked(hub, tokens)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
OPTION_KEYS = st.sampled_from(["profile", "gpu", "image", "mig_profile", "count", "model", "environment", "x"])
USER_OPTIONS = st.dictionaries(OPTION_KEYS, JSON | st.sampled_from(["cpu", "gpu", "*", "", "../gpu"]), max_size=4)


def stop_if_started(hub, user: str) -> None:
    """Stop the user's server; a DELETE while its start is still pending is asked again."""
    deadline = time.monotonic() + 120
    while hub.api("GET", f"/users/{user}").json().get("servers"):
        assert time.monotonic() < deadline, f"the server of {user} did not stop"
        hub.api("DELETE", f"/users/{user}/server")
        time.sleep(1)


def test_user_options_from_the_rest_api_are_started_or_refused_in_one_line(hub, tokens):
    student = ch.COURSE_STUDENT  # in the GPU group: the GPU profile is allowed, one device at most
    headers = {"Authorization": f"token {tokens[student]}"}
    outcomes: dict[int, int] = {}

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(options=USER_OPTIONS | JSON)
    def run(options):
        r = requests.post(f"{hub.url}/hub/api/users/{student}/server", json=options, headers=headers, timeout=60)
        outcomes[r.status_code] = outcomes.get(r.status_code, 0) + 1
        problem = problem_with(r)
        assert problem is None, f"user_options {options!r} -> {r.status_code}: {problem}"
        if r.status_code in (201, 202):
            stop_if_started(hub, student)

    run()
    CASES["user_options (REST)"] = sum(outcomes.values())
    print(f"user_options: {sum(outcomes.values())} cases, statuses {outcomes}")
    assert outcomes.get(400), "no user_options were refused: the strategy reached nothing"
    assert_nothing_leaked(hub, tokens)


def test_the_spawn_form_post_is_started_or_refused_in_one_line(make_hub, tmp_path):
    """As a signed-in browser does (the login form's cookie and _xsrf), on a shared-password hub."""
    (tmp_path / "gpus.json").write_text(json.dumps(ch.GPU_CONFIG))
    hub = make_hub(env={"GPUHUB_GPU_CONFIG": str(tmp_path / "gpus.json"), "GPUHUB_MEM_LIMIT": "1G"}).start()
    student = "gpuhubt-formfz"
    hub.api("POST", "/users", json={"usernames": [student]})
    assert hub.api("POST", f"/groups/{ch.GPU_GROUP}").status_code in (201, 409)
    assert hub.api("POST", f"/groups/{ch.GPU_GROUP}/users", json={"users": [student]}).ok
    browser = UserSession(hub.url, student)
    page = browser.login(SHARED_PASSWORD)
    assert page.url.endswith("/hub/spawn") and 'name="profile"' in page.text
    outcomes: dict[int, int] = {}
    fields = st.dictionaries(
        st.sampled_from(["profile", "gpu", "image", "count", "mig_profile", "x"]),
        st.lists(st.text(max_size=40) | st.sampled_from(["cpu", "gpu", "-1", "1e400", "\x00"]), min_size=1, max_size=3),
        max_size=4,
    )

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(form=fields)
    def run(form):
        data = {**form, "_xsrf": browser._xsrf("/hub/")}
        r = browser.http.post(f"{hub.url}/hub/spawn/{student}", data=data, allow_redirects=False, timeout=60)
        outcomes[r.status_code] = outcomes.get(r.status_code, 0) + 1
        assert r.status_code < 500, f"form {form!r} -> {r.status_code}: {r.text[:300]!r}"
        assert r.status_code != 403, f"form {form!r} was refused as a forgery: {r.text[:200]!r}"
        assert "Traceback" not in r.text
        if r.status_code in (301, 302, 303):
            stop_if_started(hub, student)
        else:
            # Refused: the form again, with one line saying why.
            errors = re.findall(r'class="[^"]*alert-danger[^"]*"[^>]*>\s*([^<]+)', r.text)
            assert errors and all("\n" not in e.strip() for e in errors), f"form {form!r}: {r.text[:400]!r}"

    run()
    CASES["spawn form POST"] = sum(outcomes.values())
    print(f"spawn form: {sum(outcomes.values())} cases, statuses {outcomes}")
    stop_if_started(hub, student)
    metrics = hub.api("GET", "/../metrics").text
    held = [ln for ln in metrics.splitlines() if ln.startswith("gpuhub_devices_held{") and not ln.endswith(" 0.0")]
    assert held == [] and "gpuhub_queue_length 0.0" in metrics, held


def test_any_group_property_a_lab_admin_writes_leaves_starts_working_or_refused_in_one_line(hub, tokens):
    """JupyterHub's group-properties endpoint stores anything; gpuhub must still answer every start."""
    member = ch.WAITER  # in GPU_GROUP and OTHER_GROUP
    headers = {"Authorization": f"token {tokens.get(member) or ch.token(hub, member)}"}
    outcomes: dict[int, int] = {}
    original = {g: hub.api("GET", f"/groups/{g}").json()["properties"] for g in (ch.GPU_GROUP, ch.OTHER_GROUP)}

    @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        group=st.sampled_from([ch.GPU_GROUP, ch.OTHER_GROUP]),
        key=st.sampled_from(["gpuhub", "courses", "gpuhub-course", "other"]),
        value=JSON,
        profile=st.sampled_from(["cpu", "gpu"]),
    )
    def run(group, key, value, profile):
        assert hub.api("PUT", f"/groups/{group}/properties", json={key: value}).ok
        r = requests.post(
            f"{hub.url}/hub/api/users/{member}/server", json={"profile": profile}, headers=headers, timeout=60
        )
        outcomes[r.status_code] = outcomes.get(r.status_code, 0) + 1
        problem = problem_with(r)
        assert problem is None, f"{group}.{key} = {json.dumps(value)[:200]} -> {r.status_code}: {problem}"
        if r.status_code in (201, 202):
            stop_if_started(hub, member)

    try:
        run()
    finally:
        for group, properties in original.items():
            hub.api("PUT", f"/groups/{group}/properties", json=properties)
    CASES["group properties + start"] = sum(outcomes.values())
    print(f"group properties: {sum(outcomes.values())} cases, statuses {outcomes}")
    assert_nothing_leaked(hub, tokens)
