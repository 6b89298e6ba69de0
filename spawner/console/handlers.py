"""The console's pages and its JSON API (`/services/gpuhub/api/...`).

Every answer of the JSON API is JSON (CSV for the export); errors are one line,
`{"status": 403, "message": "..."}`. Reads and writes go to the hub with the caller's own token,
so the hub refuses what the caller may not do; writes are also checked here first so a refusal
names the scope. Cookie-authenticated requests other than page views must carry the `X-XSRFToken`
header (HubOAuth refuses the cookie otherwise); token-authenticated ones need not.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import web

from . import openapi, report
from .hub import Hub, HubError, segment

VIEW = "custom:gpuhub:view"
MANAGE = "custom:gpuhub:manage"
READ_USAGE = "custom:gpuhub:read-usage"
PAGES = {"gpus": "GPUs", "queue": "Queue", "quotas": "Quotas and budgets", "usage": "Usage"}
AUDIT_SHOWN = 50


def holds(scopes: set[str], scope: str) -> bool:
    """Whether the scopes hold `scope`, whole or narrowed by a filter (`scope!group=...`)."""
    return any(s == scope or s.startswith(scope + "!") for s in scopes)


class ConsoleHandler(HubOAuthenticated, web.RequestHandler):
    @property
    def hub(self) -> Hub:
        return self.settings["gpuhub_hub"]

    async def prepare(self):
        # The user is looked up here, without blocking: HubAuth's synchronous lookup would hold the
        # event loop during its call to the hub.
        model = await self.hub_auth.get_user(self, sync=False)
        if model is not None:
            try:
                model = self.check_hub_user(model)
            except UserNotAllowed:
                model = None
        self._hub_auth_user_cache = model

    @property
    def scopes(self) -> set[str]:
        return set((self.current_user or {}).get("scopes") or [])

    def can(self, scope: str) -> bool:
        return holds(self.scopes, scope)

    @property
    def token(self) -> str:
        return self.hub_auth.get_token(self) or ""


class PageHandler(ConsoleHandler):
    async def get(self, page: str = ""):
        page = page or "gpus"
        if page not in PAGES:
            raise web.HTTPError(404)
        if self.current_user is None:
            self.redirect(self.get_login_url())
            return
        if self.current_user.get("kind", "user") != "user" or not self.can(VIEW):
            self.set_status(403)
            self.render("denied.html", name=self.current_user.get("name", ""), hub=self.settings["gpuhub_hub_home"])
            return
        self.render(
            "page.html",
            page=page,
            pages=PAGES,
            name=self.current_user["name"],
            can_manage=self.can(MANAGE),
            can_read_usage=self.can(READ_USAGE),
            xsrf=self.xsrf_token.decode("ascii"),
            prefix=self.settings["gpuhub_prefix"],
            hub=self.settings["gpuhub_hub_home"],
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}: {self._reason}\n")


class APIHandler(ConsoleHandler):
    """JSON in and out; every request needs a signed-in caller holding the view scope."""

    # No check_xsrf_cookie here: HubOAuth calls HubAuthenticated's own before it accepts a cookie
    # on a write (a token in the Authorization header needs none), so a cross-site form post that
    # carries the lab admin's cookie but not the X-XSRFToken header is signed in as nobody.

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args
        elif exc is not None and not isinstance(exc, web.HTTPError):
            message = "the console failed; its log says why"
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"status": status_code, "message": " ".join(str(message).split())}))

    def need(self, scope: str = VIEW) -> None:
        if self.current_user is None:
            raise web.HTTPError(
                403,
                "sign in at the console's page first (cookie requests also need the X-XSRFToken header),"
                " or send 'Authorization: token <your hub token>'",
            )
        if not self.can(scope):
            who = "lab admins have it" if scope != VIEW else "lab admins and instructors have it"
            raise web.HTTPError(403, f"this needs the {scope} scope ({who})")

    async def ask(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        try:
            return await self.hub.call(self.token, method, path, params, body)
        except HubError as e:
            status = 504 if e.status == 599 else e.status
            raise web.HTTPError(status, e.message) from None

    def reply(self, answer: Any) -> None:
        self.finish(json.dumps(answer))


class MeHandler(APIHandler):
    async def get(self):
        self.need()
        self.reply(
            {
                "name": self.current_user["name"],
                "can_manage": self.can(MANAGE),
                "can_read_usage": self.can(READ_USAGE),
            }
        )


class DevicesHandler(APIHandler):
    async def get(self):
        self.need()
        devices = await self.ask("GET", "/gpuhub/devices")
        self.reply({**devices, "summary": report.device_summary(devices)})


class LiftHandler(APIHandler):
    async def post(self, uuid: str):
        self.need(MANAGE)
        self.reply(await self.ask("POST", f"/gpuhub/devices/{segment(uuid)}/lift", body={}))


class QueueHandler(APIHandler):
    async def get(self):
        self.need()
        self.reply(await self.ask("GET", "/gpuhub/queue"))


class DequeueHandler(APIHandler):
    async def delete(self, user: str, server: str = ""):
        self.need(MANAGE)
        path = f"/gpuhub/queue/{segment(user)}" + (f"/{segment(server)}" if server else "")
        await self.ask("DELETE", path)
        self.set_status(204)
        self.finish()


class QuotasHandler(APIHandler):
    async def get(self):
        self.need()
        quotas, audit = await asyncio.gather(
            self.ask("GET", "/gpuhub/quotas"),
            self.ask("GET", "/gpuhub/audit", {"limit": AUDIT_SHOWN}),
        )
        self.reply({**quotas, "audit": audit.get("entries", [])})


class QuotaHandler(APIHandler):
    async def put(self, group: str):
        self.need(MANAGE)
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON: an object of quota keys") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object of quota keys ({} removes the group's quota)")
        self.reply(await self.ask("PUT", f"/gpuhub/quotas/{segment(group)}", body=body))


class AuditHandler(APIHandler):
    async def get(self):
        self.need()
        limit = self.get_argument("limit", str(AUDIT_SHOWN))
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise web.HTTPError(400, f"limit must be a whole number from 1 to 1000, got {limit!r}")
        params = {"group": self.get_argument("group", None), "limit": int(limit)}
        self.reply(await self.ask("GET", "/gpuhub/audit", params))


def period(handler: APIHandler) -> dict[str, Any]:
    try:
        by = report.check_breakdown(handler.get_argument("by", None))
    except report.ReportError as e:
        raise web.HTTPError(400, str(e)) from None
    return {"since": handler.get_argument("since", None), "until": handler.get_argument("until", None), "by": by}


class UsageHandler(APIHandler):
    async def get(self):
        self.need()
        asked = period(self)
        calls = [self.ask("GET", "/gpuhub/usage", asked)]
        if asked["by"] != "reason":
            calls.append(self.ask("GET", "/gpuhub/usage", {**asked, "by": "reason"}))
        answers = await asyncio.gather(*calls)
        try:
            quotas = await self.ask("GET", "/gpuhub/quotas")
        except web.HTTPError:
            quotas = {}  # budgets are a part of the page, not a reason to refuse it
        main = answers[0]
        rows = main.get("rows") or []
        self.reply(
            {
                **main,
                "bars": report.bars(rows),
                "total_hours": round(sum(float(r.get("gpu_hours") or 0) for r in rows), 4),
                "end_reasons": report.end_reasons(rows),
                "culled_hours": report.taken_back_by_culling(rows),
                "budgets": report.budgets(quotas),
            }
        )


class UsageCSVHandler(APIHandler):
    async def get(self):
        self.need()
        asked = period(self)
        answer = await self.ask("GET", "/gpuhub/usage", asked)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="gpuhub-usage-by-{asked["by"]}.csv"')
        self.finish(report.usage_csv(answer))


class OpenAPIHandler(APIHandler):
    async def get(self):
        self.reply(openapi.document(self.settings["gpuhub_prefix"]))


class NotFoundHandler(APIHandler):
    async def prepare(self):
        raise web.HTTPError(404, f"no such endpoint: {self.request.method} {self.request.path}")
