"""A student's browser, without the browser: a load client in the manner of hubtraf.

Each `Student` has its own aiohttp session and cookie jar and makes the requests a browser makes
for a student who signs in and runs a cell, with the headers a browser sends (Sec-Fetch-Mode,
Origin), so the hub and the server apply the same cookie and XSRF rules they apply to a browser:

  sign_in      GET /hub/login (sets the _xsrf cookie), POST the login form with the field _xsrf,
               follow the redirects to the landing page (the spawn form: no server yet)
  click_start  POST the spawn form (multipart, profile=...) to the action the page names, which
               lands on /hub/spawn-pending/<name>
  wait_ready   the page's EventSource: GET .../server/progress?_xsrf=... (text/event-stream)
               until an event says ready (or failed)
  open_lab     reload the pending page, as its script does on "ready": the hub redirects to
               /user/<name>/, which goes through the OAuth hand-shake with the hub to /user/<name>/lab
  start_kernel POST /user/<name>/api/kernels with the server's _xsrf cookie as X-XSRFToken
  run_cell     the kernel's websocket /user/<name>/api/kernels/<id>/channels (cookie auth, Origin),
               an execute_request, its stdout until the kernel is idle again
  stop_server  DELETE /hub/api/users/<name>/server with the hub's _xsrf, as the home page's button

Every failure is a `StepError` naming the step. harness/kernel.py runs cells with an API token in
its own thread (for tests); this client uses the browser's cookies in one event loop for all
students, and reuses kernel.py's `Result`.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from harness.kernel import Result, execute_request

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) gpuhub-loadclient/1.0"
NAVIGATE = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Site": "same-origin",
}
FETCH = {
    "Accept": "application/json",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Dest": "empty",
    "Sec-Fetch-Site": "same-origin",
}


class StepError(Exception):
    """One step of a student's session failed: an unexpected status, a timeout, a failed spawn, a wrong output."""

    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


@dataclass
class Timeouts:
    request: float = 60  # one page or API request
    ready: float = 420  # the progress stream until ready
    lab: float = 120  # the lab page, OAuth hand-shake included
    cell: float = 120  # the websocket and the cell


@dataclass
class Student:
    hub_url: str
    name: str
    timeouts: Timeouts = field(default_factory=Timeouts)
    events: list[dict] = field(default_factory=list)  # the spawn's progress events
    kernel_id: str = ""
    _session: aiohttp.ClientSession | None = None
    _pending_url: str = ""
    _progress_url: str = ""
    _landing: str = ""  # the page sign-in landed on
    _lab: tuple[str, str] | None = None  # URL and page, when the start went straight to the server

    @property
    def origin(self) -> str:
        u = URL(self.hub_url)
        return str(u.origin())

    @property
    def server_prefix(self) -> str:
        return f"/user/{self.name}/"

    async def __aenter__(self) -> Student:
        # unsafe=True: the hub is reached at an IP address, whose cookies aiohttp drops otherwise.
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=self.timeouts.request),
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session:
            await self._session.close()

    # --- helpers ---------------------------------------------------------------------------
    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Student(...)`"
        return self._session

    def xsrf(self, path: str) -> str:
        """The _xsrf cookie a page under `path` would read (document.cookie)."""
        cookie = self.http.cookie_jar.filter_cookies(URL(self.hub_url).with_path(path)).get("_xsrf")
        return cookie.value if cookie else ""

    async def _page(self, step: str, method: str, url: str, timeout: float | None = None, **kwargs) -> tuple[str, str]:
        """A navigation (redirects followed): the final URL and the page, or StepError."""
        headers = {**NAVIGATE, **kwargs.pop("headers", {})}
        if method != "GET":
            headers["Origin"] = self.origin
        try:
            async with self.http.request(
                method,
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeouts.request),
                **kwargs,
            ) as r:
                text = await r.text()
                if r.status >= 400:
                    raise StepError(step, f"HTTP {r.status} from {r.url.path}: {_excerpt(text)}")
                return str(r.url), text
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise StepError(step, f"{type(e).__name__} on {method} {URL(url).path}: {e}") from None

    async def _fetch(self, step: str, method: str, url: str, xsrf_path: str, ok: tuple[int, ...], **kwargs) -> dict:
        """A script's fetch() of a JSON API, with the page's _xsrf cookie as X-XSRFToken."""
        headers = {**FETCH, "X-XSRFToken": self.xsrf(xsrf_path), **kwargs.pop("headers", {})}
        if method != "GET":
            headers["Origin"] = self.origin
        try:
            async with self.http.request(method, url, headers=headers, allow_redirects=False, **kwargs) as r:
                text = await r.text()
                if r.status not in ok:
                    raise StepError(step, f"HTTP {r.status} from {method} {r.url.path}: {_excerpt(text)}")
                return json.loads(text) if text.strip() else {}
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise StepError(step, f"{type(e).__name__} on {method} {URL(url).path}: {e}") from None

    # --- the steps ------------------------------------------------------------------------------
    async def sign_in(self, password: str) -> str:
        """The login page, then its form; returns the path of the landing page."""
        _, page = await self._page("sign-in", "GET", f"{self.hub_url}/hub/login")
        m = re.search(r'name="_xsrf" value="([^"]+)"', page)
        token = html.unescape(m.group(1)) if m else self.xsrf("/hub/")
        url, page = await self._page(
            "sign-in",
            "POST",
            f"{self.hub_url}/hub/login?next=",
            data={"username": self.name, "password": password, "_xsrf": token},
        )
        path = URL(url).path
        if path.rstrip("/").endswith("/hub/login"):
            raise StepError("sign-in", f"still on the login page: {_excerpt(_login_error(page))}")
        self._landing = page
        return path

    async def click_start(self, profile: str) -> None:
        """Submit the spawn form with `profile` chosen, as the Start button does."""
        page = self._landing
        if 'id="spawn_form"' not in page:
            _, page = await self._page("start", "GET", f"{self.hub_url}/hub/spawn")
        m = re.search(r'<form[^>]*id="spawn_form"[^>]*action="([^"]+)"', page, re.S)
        if not m:
            raise StepError("start", f"no spawn form: {_excerpt(page)}")
        if f'value="{profile}"' not in page:
            raise StepError("start", f"the form offers no profile {profile!r}")
        action = URL(self.hub_url).join(URL(html.unescape(m.group(1))))
        form = aiohttp.FormData({"profile": profile}, default_to_multipart=True)
        url, page = await self._page("start", "POST", str(action), data=form)
        if URL(url).path.startswith(self.server_prefix):
            # Ready within the hub's first second: the pending page redirected on to the server.
            self._lab = (url, page)
            return
        if "/hub/spawn-pending/" not in URL(url).path:
            raise StepError("start", f"landed on {URL(url).path}, not the pending page: {_excerpt(page)}")
        m = re.search(r'new EventSource\("([^"]+)"\)', page)
        if not m:
            raise StepError("start", "the pending page names no progress stream")
        self._pending_url = url
        self._progress_url = str(URL(self.hub_url).join(URL(html.unescape(m.group(1)))))

    async def wait_ready(self) -> list[dict]:
        """The pending page's EventSource, until an event says ready; a failed event is an error."""
        if self._lab:
            return self.events
        headers = {**FETCH, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        timeout = aiohttp.ClientTimeout(total=self.timeouts.ready, sock_read=None)
        try:
            async with self.http.get(self._progress_url, headers=headers, timeout=timeout) as r:
                if r.status != 200:
                    raise StepError("ready", f"HTTP {r.status} from the progress stream: {_excerpt(await r.text())}")
                async for raw in r.content:
                    line = raw.decode(errors="replace").strip()
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    event["t"] = time.monotonic()
                    self.events.append(event)
                    if event.get("failed"):
                        raise StepError("ready", f"spawn failed: {event.get('message', '')}")
                    if event.get("ready"):
                        return self.events
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise StepError("ready", f"{type(e).__name__} on the progress stream: {e}") from None
        raise StepError("ready", f"the progress stream ended without ready: {self.events[-2:]}")

    async def open_lab(self) -> None:
        """Reload the pending page: redirects to the server, its OAuth hand-shake, then /lab."""
        url, page = self._lab or await self._page("lab", "GET", self._pending_url, timeout=self.timeouts.lab)
        path = URL(url).path
        if not path.startswith(self.server_prefix) or "jupyter-config-data" not in page:
            raise StepError("lab", f"landed on {path}, not JupyterLab: {_excerpt(page)}")
        if not self.xsrf(self.server_prefix):
            raise StepError("lab", "the server set no _xsrf cookie")

    async def start_kernel(self) -> str:
        model = await self._fetch(
            "kernel",
            "POST",
            f"{self.hub_url}{self.server_prefix}api/kernels",
            self.server_prefix,
            (201,),
            json={"name": "python3"},
            timeout=aiohttp.ClientTimeout(total=self.timeouts.lab),
        )
        self.kernel_id = model["id"]
        return self.kernel_id

    async def run_cell(self, code: str) -> Result:
        """One execute_request over the kernel's websocket; stdout and status until the kernel is idle."""
        url = (
            URL(f"{self.hub_url}{self.server_prefix}api/kernels/{self.kernel_id}/channels")
            .with_scheme("ws")
            .with_query(session_id=uuid.uuid4().hex)
        )
        headers = {"Sec-Fetch-Mode": "websocket", "Sec-Fetch-Dest": "websocket", "Sec-Fetch-Site": "same-origin"}
        msg_id = uuid.uuid4().hex
        result = Result()

        async def converse() -> None:
            async with self.http.ws_connect(url, origin=self.origin, headers=headers, max_msg_size=0) as ws:
                await ws.send_str(json.dumps(execute_request(code, msg_id)))
                while not result.done:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        return  # closed, or an error
                    result.take(json.loads(msg.data), msg_id)

        try:
            await asyncio.wait_for(converse(), self.timeouts.cell)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise StepError("cell", f"{type(e).__name__} on the kernel websocket: {e} ({result})") from None
        return result

    async def stop_server(self) -> None:
        """The home page's Stop button: DELETE the server with the hub's XSRF token."""
        await self._fetch("stop", "DELETE", f"{self.hub_url}/hub/api/users/{self.name}/server", "/hub/", (202, 204))


def _login_error(page: str) -> str:
    m = re.search(r'class="login_error">([^<]*)<', page)
    return m.group(1) if m else page


def _excerpt(text: str, limit: int = 200) -> str:
    text = re.sub(r"<[^>]+>", " ", text)
    return " ".join(text.split())[:limit]
