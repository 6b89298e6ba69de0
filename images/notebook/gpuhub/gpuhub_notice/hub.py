"""Asking the hub for this server's notice, at most once per few seconds.

Each open JupyterLab tab polls the server; the hub hears one request per `ttl`
seconds however many tabs there are, and concurrent polls share one request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httputil import url_concat

# The hub's endpoint, under JUPYTERHUB_API_URL (e.g. http://10.213.0.1:8081/hub/api).
HUB_PATH = "/gpuhub/notice"


def one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def is_notice_answer(body: Any) -> bool:
    """The shape the hub promises: {"notice": null} or {"notice": {"message": "...", ...}}."""
    if not isinstance(body, dict) or "notice" not in body:
        return False
    notice = body["notice"]
    return notice is None or (isinstance(notice, dict) and isinstance(notice.get("message"), str))


class HubNotice:
    """This server's current notice from the hub, cached for `ttl` seconds.

    `current()` never raises: a hub that cannot be asked, or answers anything but
    200 with the promised JSON, means "no notice", with the reason in "error".
    """

    def __init__(
        self,
        url: str | None,
        token: str = "",
        *,
        ttl: float = 5.0,
        timeout: float = 5.0,
        ssl: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.ttl = ttl
        self.timeout = timeout
        self.ssl = dict(ssl or {})
        self.clock = clock
        self.log = log or logging.getLogger("gpuhub_notice")
        self._answer: dict | None = None
        self._answered_at = 0.0
        self._pending: asyncio.Future | None = None
        self._last_error: str | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str], **kwargs: Any) -> HubNotice:
        """The hub's URL and this server's credentials, as JupyterHub's spawner sets them."""
        api_url = env.get("JUPYTERHUB_API_URL", "").rstrip("/")
        url = url_concat(api_url + HUB_PATH, {"server": env.get("JUPYTERHUB_SERVER_NAME", "")}) if api_url else None
        # With internal_ssl the hub's API is https and wants this server's client certificate.
        ssl = {
            option: env[name]
            for option, name in (
                ("client_key", "JUPYTERHUB_SSL_KEYFILE"),
                ("client_cert", "JUPYTERHUB_SSL_CERTFILE"),
                ("ca_certs", "JUPYTERHUB_SSL_CLIENT_CA"),
            )
            if env.get(name)
        }
        return cls(url, env.get("JUPYTERHUB_API_TOKEN", ""), ssl=ssl, **kwargs)

    async def current(self) -> dict:
        if self._answer is not None and self.clock() - self._answered_at < self.ttl:
            return self._answer
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh())
        # shield: a browser that goes away must not cancel the request other tabs wait for.
        return await asyncio.shield(self._pending)

    async def _refresh(self) -> dict:
        try:
            answer = await self._ask_hub()
            self._answer, self._answered_at = answer, self.clock()
            self._log_change(answer.get("error"))
            return answer
        finally:
            self._pending = None

    async def _ask_hub(self) -> dict:
        if not self.url:
            return {"notice": None, "error": "not started by JupyterHub (JUPYTERHUB_API_URL is not set)"}
        request = HTTPRequest(
            self.url,
            headers={"Authorization": f"token {self.token}", "Accept": "application/json"},
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            **self.ssl,
        )
        try:
            # raise_error=False: an HTTP error status is an answer; no answer at all (refused,
            # timed out, TLS, DNS) still raises.
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as e:
            return {"notice": None, "error": one_line(f"hub not reachable: {e}")}
        if response.code != 200:
            return {"notice": None, "error": f"hub answered HTTP {response.code}"}
        try:
            body = json.loads(response.body)
        except ValueError:
            body = None
        if not is_notice_answer(body):
            return {"notice": None, "error": "hub answered something other than a notice"}
        return body

    def _log_change(self, error: str | None) -> None:
        """Log when asking the hub starts or stops failing, not on every poll."""
        if error != self._last_error:
            if error:
                self.log.warning(f"gpuhub_notice: no notice from the hub: {error}")
            elif self._last_error:
                self.log.info("gpuhub_notice: the hub answers again")
        self._last_error = error
