"""The hub's REST API as the `gpuhub` command calls it: one session with the caller's token, and
every failure turned into one line (`CLIError`) that the command prints before exiting non-zero."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from . import courses


class CLIError(Exception):
    """One line for the user; the command changed nothing when it raises this."""


def hub_message(r: requests.Response) -> str:
    """The first line of the hub's error message (`{"status": .., "message": ..}`), else of the body."""
    try:
        body = r.json()
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    text = (message or r.reason or r.text or "").strip()
    return text.splitlines()[0][:300] if text else f"HTTP {r.status_code}"


def path_part(name: str) -> str:
    """A user or server name as one segment of an API path."""
    return quote(name, safe="@~")


class Hub:
    def __init__(self, url: str, token: str):
        if not token:
            raise CLIError("no API token: set GPUHUB_TOKEN or pass --token (create one at <hub>/hub/token)")
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        """Any request to the hub's host with the token; an unreachable hub is one line."""
        try:
            return self.http.request(method, url, timeout=kwargs.pop("timeout", 30), **kwargs)
        except requests.RequestException as e:
            raise CLIError(f"cannot reach the hub at {self.url} ({type(e).__name__})") from None

    def call(self, method: str, path: str, ok=(200, 201, 204), **kwargs) -> requests.Response:
        r = self.request(method, f"{self.url}/hub/api{path}", **kwargs)
        if r.status_code in ok:
            return r
        if r.status_code == 403:
            raise CLIError(f"not allowed ({method} /hub/api{path}): {hub_message(r)}")
        if r.status_code in (400, 404, 409):
            # gpuhub's endpoints answer these with a line written for the user: show it as it is.
            raise CLIError(hub_message(r))
        raise CLIError(f"{method} /hub/api{path} failed: {r.status_code} {hub_message(r)}")

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def whoami(self) -> dict:
        return self.get("/user")

    def group(self, course: str) -> dict | None:
        r = self.call("GET", f"/groups/{courses.GROUP_PREFIX}{course}", ok=(200, 404))
        return r.json() if r.status_code == 200 else None

    def course(self, name: str) -> tuple[dict, courses.Course]:
        group = self.group(courses.check_name(name))
        if group is None or courses.PROPERTY not in (group.get("properties") or {}):
            raise CLIError(f"unknown course {name!r}")
        return group, courses.parse(group["name"], group["properties"][courses.PROPERTY])

    def check_users(self, users: list[str]) -> None:
        for user in users:
            if not courses.USER_NAME.match(user):
                raise CLIError(f"{user!r} is not a valid user name")
            if self.call("GET", f"/users/{user}", ok=(200, 404)).status_code == 404:
                raise CLIError(f"unknown user {user!r}")
