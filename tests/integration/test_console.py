"""The lab admin console in headless Chromium against a real hub, real Docker and the real OIDC provider.

People sign in at the provider and open /services/gpuhub/ as they would. What holds which GPU is read
from Docker (the containers' labels), quotas and the audit log from the hub's REST API, never from the
console itself. Each page's screenshot is written to docs/images/console-*.png for docs/admin.md.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from harness.hub import user_container
from spawner import quota
from spawner.container import LABEL_DEVICES

from . import console_hub as ch
from .denials import DENIED
from .oidc import sign_in_at_provider

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_image, test_network, chp_on_path):
    hub, provider = ch.start(tmp_path_factory.mktemp("console"), test_image)
    yield hub
    for user in (ch.COURSE_STUDENT, ch.WAITER):
        for server in list(hub.user_model(user)["servers"]):
            hub.stop_server(user, server)
    hub.stop()
    provider.stop()


@pytest.fixture(scope="module")
def held(hub, docker_client):
    """The course student's GPU server, and the device Docker says its container got."""
    r = hub.start_server(ch.COURSE_STUDENT, options={"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(ch.COURSE_STUDENT)
    device = user_container(docker_client, ch.COURSE_STUDENT).labels[LABEL_DEVICES]
    assert device in ch.GPUS
    return device


@pytest.fixture(scope="module")
def lab(hub):
    """The hub's REST API as the lab admin (the test's admin service holds no gpuhub scope)."""
    token = ch.token(hub, ch.LAB_ADMIN)
    return lambda method, path, **kw: ch.hub_api(hub, token, method, path, **kw)


def open_console(page, hub, user: str, path: str = ""):
    sign_in_at_provider(page, hub.url, user, next_path=ch.CONSOLE + path)
    page.wait_for_url(re.compile(re.escape(ch.CONSOLE + path) + r"$"))


def shoot(page, name: str) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / f"console-{name}.png"), full_page=True)


def quota_of(hub, group: str):
    return (hub.api("GET", f"/groups/{group}").json().get("properties") or {}).get(quota.PROPERTY)


def test_a_lab_admin_signs_in_and_sees_the_gpu_map_with_a_held_device_and_its_holder(hub, held, browser_page):
    page = browser_page
    open_console(page, hub, ch.LAB_ADMIN)
    row = page.locator(f'tr[data-device="{held}"]')
    row.wait_for()
    assert ch.COURSE_STUDENT in row.inner_text() and "gpu" in row.inner_text()
    (free,) = [u for u in ch.GPUS if u != held]
    assert "free" in page.locator(f'tr[data-device="{free}"]').inner_text()
    # Telemetry arrives without a reload: the stand-in NVML's 2048 MiB of used memory.
    page.wait_for_function(
        f"document.querySelector('tr[data-device=\"{held}\"]').innerText.includes('2.0 GiB')", timeout=30_000
    )
    assert page.locator("header").inner_text().count("lab admin") == 1
    shoot(page, "gpus")


def test_the_lab_admin_edits_a_quota_and_the_next_start_of_a_member_obeys_it(hub, held, lab, browser_page):
    r = hub.start_server(ch.COURSE_STUDENT, server="second", options={"profile": "gpu"})
    assert r.status_code == 403 and "your limit is 1" in r.json()["message"]
    page = browser_page
    open_console(page, hub, ch.LAB_ADMIN, "quotas")
    card = page.locator(f'section.group[data-group="{ch.GPU_GROUP}"]')
    card.get_by_role("button", name="Edit").click()  # click one
    card.locator('input[name="max_devices_per_user"]').fill("2")
    card.get_by_role("button", name="Save").click()  # click two
    card.locator('td[data-key="max_devices_per_user"]').filter(has_text="2").wait_for()
    assert quota_of(hub, ch.GPU_GROUP) == {"max_devices_per_user": 2}
    audit = lab("GET", "/gpuhub/audit?limit=1").json()["entries"][0]
    assert (audit["who"], audit["action"], audit["target"]) == (ch.LAB_ADMIN, "quota", ch.GPU_GROUP)
    page.locator("table").last.filter(has_text=ch.LAB_ADMIN).wait_for()  # the audit trail, live
    shoot(page, "quotas")

    r = hub.start_server(ch.COURSE_STUDENT, server="second", options={"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(ch.COURSE_STUDENT, "second")


def test_an_invalid_edit_shows_the_hubs_error_and_changes_nothing(hub, lab, browser_page):
    before, audit_before = quota_of(hub, ch.GPU_GROUP), lab("GET", "/gpuhub/audit").json()["entries"]
    page = browser_page
    open_console(page, hub, ch.LAB_ADMIN, "quotas")
    card = page.locator(f'section.group[data-group="{ch.GPU_GROUP}"]')
    card.get_by_role("button", name="Edit").click()
    card.locator('input[name="max_devices_per_user"]').fill("lots")
    card.get_by_role("button", name="Save").click()
    error = card.locator(".error")
    error.wait_for()
    assert "max_devices_per_user" in error.inner_text() and "\n" not in error.inner_text().strip()
    assert card.locator("form").is_visible()  # the form stays open with what was typed
    assert quota_of(hub, ch.GPU_GROUP) == before
    assert lab("GET", "/gpuhub/audit").json()["entries"] == audit_before
    DENIED.append("console: malformed quota edit -> 400, nothing changed")


def test_a_cross_site_write_with_the_lab_admins_cookie_but_no_xsrf_header_is_refused(hub, lab, browser_page):
    """What another web page could make a signed-in lab admin's browser send: the cookie, no header."""
    before, audit_before = quota_of(hub, ch.GPU_GROUP), lab("GET", "/gpuhub/audit").json()["entries"]
    page = browser_page
    open_console(page, hub, ch.LAB_ADMIN, "quotas")
    r = page.request.put(
        f"{hub.url}{ch.CONSOLE}api/quotas/{ch.GPU_GROUP}",
        data='{"max_devices_per_user": 0}',
        headers={"Content-Type": "application/json", "Origin": "https://evil.example"},
    )
    assert r.status in (401, 403), (r.status, r.text())
    assert quota_of(hub, ch.GPU_GROUP) == before
    assert lab("GET", "/gpuhub/audit").json()["entries"] == audit_before
    DENIED.append(f"console: cookie write without X-XSRFToken -> {r.status}")


def test_the_queue_shows_a_waiter_and_a_lab_admin_removes_it(hub, held, lab, browser_page):
    # Both GPUs held (the course student's two servers, the second one from the quota test): the next
    # GPU start waits.
    if "second" not in hub.user_model(ch.COURSE_STUDENT)["servers"]:  # this test run alone
        assert lab("PUT", f"/gpuhub/quotas/{ch.GPU_GROUP}", json={"max_devices_per_user": 2}).ok
        hub.start_server(ch.COURSE_STUDENT, server="second", options={"profile": "gpu"})
        hub.wait_ready(ch.COURSE_STUDENT, "second")
    r = hub.start_server(ch.WAITER, options={"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    page = browser_page
    open_console(page, hub, ch.LAB_ADMIN, "queue")
    row = page.locator(f'tr[data-waiter="{ch.WAITER}/"]')
    row.wait_for()
    assert row.locator("td").first.inner_text() == "1" and "1 × GPU" in row.inner_text()
    shoot(page, "queue")
    row.get_by_role("button", name="Remove").click()
    row.get_by_role("button", name="Remove: sure?").click()
    row.wait_for(state="detached")
    events = hub.progress(ch.WAITER, timeout=60)
    assert events[-1].get("failed") and "removed from the GPU queue" in events[-1]["message"]
    assert lab("GET", "/gpuhub/queue").json()["queue"] == []


def test_usage_shows_gpu_hours_as_bars_and_exports_csv(hub, held, browser_page):
    page = browser_page
    open_console(page, hub, ch.LAB_ADMIN, "usage")
    page.locator("svg.chart rect.bar").first.wait_for()
    assert ch.COURSE_STUDENT in page.locator("svg.chart").inner_html()
    page.get_by_text("running", exact=True).first.wait_for()  # the end reasons table: still running
    page.locator("td", has_text=ch.OTHER_GROUP).first.wait_for()  # the physics group's budget
    shoot(page, "usage")
    page.select_option('select[name="by"]', "group")
    page.locator("svg.chart", has_text=ch.GPU_GROUP).wait_for()
    with page.expect_download() as download:
        page.get_by_text("Export CSV").click()
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    assert rows[0][:3] == ["group", "gpu_hours", "leases"]
    assert [r[0] for r in rows[1:]] == [ch.GPU_GROUP] and float(rows[1][1]) > 0


def test_a_student_gets_a_clear_403(hub, browser_page):
    page = browser_page
    sign_in_at_provider(page, hub.url, ch.STUDENT, next_path=ch.CONSOLE)
    page.wait_for_selector("main.denied")
    assert "for lab admins and instructors" in page.inner_text("h1")
    r = page.request.get(f"{hub.url}{ch.CONSOLE}gpus")
    assert r.status == 403
    r = page.request.get(f"{hub.url}{ch.CONSOLE}api/gpus", headers={"X-XSRFToken": "x"})
    assert r.status == 403
    DENIED.append(f"console: student -> page and API -> {r.status}")


def test_an_instructor_sees_only_their_course_read_only(hub, held, browser_page):
    page = browser_page
    open_console(page, hub, ch.TEACHER, "quotas")
    page.locator(f'section.group[data-group="{ch.COURSE}"]').wait_for()
    groups = page.locator("section.group").evaluate_all("cards => cards.map(c => c.dataset.group)")
    assert groups == [ch.COURSE]
    assert page.get_by_role("button", name="Edit").count() == 0
    assert "read-only" in page.inner_text("header")
    page.goto(f"{hub.url}{ch.CONSOLE}gpus")
    row = page.locator(f'tr[data-device="{held}"]')
    row.wait_for()
    assert ch.COURSE_STUDENT in row.inner_text()  # a member of the course: shown
    assert page.get_by_role("button", name="Release").count() == 0
    # A write straight to the console's API with the instructor's own cookie and XSRF token: refused.
    xsrf = page.evaluate("document.body.dataset.xsrf")
    r = page.request.put(
        f"{hub.url}{ch.CONSOLE}api/quotas/{ch.COURSE}",
        data="{}",
        headers={"X-XSRFToken": xsrf, "Content-Type": "application/json"},
    )
    assert r.status == 403 and "custom:gpuhub:manage" in r.json()["message"]
    DENIED.append(f"console: instructor -> quota write -> {r.status}")
