"""The hub's REST API, called with the signed-in user's own token: the hub checks every permission."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


class HubError(Exception):
    """The hub refused or failed a call; `status` and a one-line `message` to pass on."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def segment(value: str) -> str:
    """One path segment of a hub URL: a name with '/' or '?' in it cannot reach another endpoint."""
    return quote(value, safe="")


class Hub:
    def __init__(self, api_url: str, timeout: float = 20):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.client = AsyncHTTPClient()

    async def call(
        self, token: str, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """The hub's JSON answer (None for 204); HubError with the hub's own status and message otherwise."""
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        url = f"{self.api_url}{path}" + (f"?{urlencode(query)}" if query else "")
        request = HTTPRequest(
            url,
            method=method,
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            body=None if body is None and method in ("GET", "DELETE") else json.dumps(body if body is not None else {}),
            request_timeout=self.timeout,
            allow_nonstandard_methods=True,
        )
        try:
            response = await self.client.fetch(request)
        except HTTPClientError as e:
            raise HubError(e.code, _message(e.response.body if e.response else b"", e.code)) from None
        except OSError as e:
            raise HubError(502, f"the hub did not answer: {e}") from None
        if response.code == 204 or not response.body:
            return None
        try:
            return json.loads(response.body)
        except ValueError:
            raise HubError(502, f"the hub answered {path} with something that is not JSON") from None


def _message(body: bytes, status: int) -> str:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    if status == 599:
        return "the hub did not answer in time"
    return " ".join(str(message or f"the hub answered {status}").split())
