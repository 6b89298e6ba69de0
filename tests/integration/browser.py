"""Headless Chromium (Debian's package) driven by Playwright for Python; no browser downloads.

`browser_page` gives a fresh page per test; when the test fails, a screenshot and the
page's URL are saved under test-artifacts/ for the CI log.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Without these Chromium keeps calling Google's services, which a closed network refuses.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("GPUHUB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium found: install Debian's `chromium` package (.ci/run does) or set GPUHUB_CHROMIUM")
    return path


@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium, request):
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(60_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:120]
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            (ARTIFACTS / f"{name}.url").write_text(page.url)
            print(f"screenshot: {ARTIFACTS / name}.png (at {page.url})")
        except Exception as e:  # the page may be gone; the test's own failure matters more
            print(f"no screenshot: {e}")
    context.close()


def login_url(hub_url: str, next_path: str = "") -> str:
    return f"{hub_url}/hub/login" + (f"?next={quote(next_path, safe='')}" if next_path else "")


def sign_in_with_password(page, hub_url: str, username: str, password: str, next_path: str = "") -> None:
    page.goto(login_url(hub_url, next_path))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("[type=submit]")


def wait_for_lab(page, username: str, timeout_ms: int = 180_000) -> None:
    """From wherever sign-in left the browser to a loaded JupyterLab of `username`."""
    page.wait_for_url(re.compile(rf"/user/{re.escape(username)}/lab"), timeout=timeout_ms)
    page.wait_for_selector(".jp-DirListing-content", timeout=timeout_ms)
