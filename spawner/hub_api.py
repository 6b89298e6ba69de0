"""gpuhub's endpoints in the hub's REST API (`/hub/api/gpuhub/...`), as JupyterHub extra handlers.

- `GET  /hub/api/gpuhub/notice?server=NAME` - the stop warning of one of the caller's own servers,
  else what happened in it lately (a process OOM-killed, with the limit; no `stop_at` then);
  JupyterLab's banner asks through the notebook server's token.
- `GET  /hub/api/gpuhub/usage?since=&until=&by=&user=&group=&profile=&device=` - GPU-hours from the
  usage records; the `custom:gpuhub:read-usage` scope (lab admins) reads every record, the
  `custom:gpuhub:view` scope (instructors) those charged to groups the caller may read.
- `DELETE /hub/api/gpuhub/servers/USER[/SERVER]` - stop a server as a lab admin (needs
  `delete:servers` on it); its usage record ends with the reason "admin".

The lab admins' endpoints (GPU map, queue, quotas, audit log) are in `spawner/admin_api.py`.

Errors are one line of JSON (`{"status": 400, "message": "..."}`), never a stack trace.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from . import admin_api, usage
from .roles import MANAGE, READ_USAGE, VIEW

CUSTOM_SCOPES = {
    READ_USAGE: {
        "description": "Read the GPU-hour usage records of every user (lab admins).",
    },
    VIEW: {
        "description": "Open gpuhub's console and read its GPU map, queue, quotas and audit log, cut to"
        " the users and groups one's other scopes let one read (lab admins, instructors).",
    },
    MANAGE: {
        "description": "Lift a GPU quarantine, remove a waiter from the GPU queue, edit a group's quota (lab admins).",
    },
}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


async def _service(handler: APIHandler):
    """The hub's GPU service. Built through a spawner (they hold its settings) if no server has yet:
    the caller's own, or any user's when a service calls."""
    from jupyterhub import orm

    from .spawner import GPUDockerSpawner

    for svc in GPUDockerSpawner._services.values():
        if svc.ledger is not None:
            return svc
    user = handler.current_user
    if getattr(user, "kind", None) != "user":
        first = handler.db.query(orm.User).first()
        user = handler.users[first] if first is not None else None
    spawner = user.spawner if user is not None else None
    if not isinstance(spawner, GPUDockerSpawner):
        raise web.HTTPError(503, "the GPU service has not started yet")
    return await spawner._service_or_503()


class NoticeHandler(APIHandler):
    async def get(self):
        user = self.current_user
        if user is None or getattr(user, "kind", "user") != "user":
            raise web.HTTPError(403, "a user's own token is needed")
        server = self.get_argument("server", "")
        if server and server not in user.spawners:
            raise web.HTTPError(404, f"{user.name} has no server named {server!r}")
        svc = await _service(self)
        owner = f"{user.name}/{server}"
        found = svc.user_notice(owner, user.spawners[server].object_id or "")
        if found is None:
            self.write({"notice": None})
            return
        notice = {"reason": found.reason, "message": found.message}
        stop_at = getattr(found, "stop_at", None)
        if stop_at is not None:  # a stop warning
            notice.update(stop_at=_iso(stop_at), seconds_left=max(0, round(stop_at - time.time())))
        else:  # something that happened in the server
            notice.update(at=_iso(found.at), stop_at=None, seconds_left=None)
        self.write({"notice": notice})


class UsageHandler(APIHandler):
    async def get(self):
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        every = READ_USAGE in self.parsed_scopes
        if not every and VIEW not in self.parsed_scopes:
            raise web.HTTPError(403, f"reading GPU usage needs the {READ_USAGE} scope (lab admins have it)")
        args = {k: self.get_argument(k, None) for k in ("since", "until", "by", "user", "group", "profile", "device")}
        users: str | frozenset | None = args["user"]
        if not every:  # an instructor: only the records of members of the groups they may read (their course)
            readable = self.get_scope_filter("read:groups")
            members = frozenset(u.name for g in self.db.query(orm.Group) if readable(g, kind="group") for u in g.users)
            if users is not None and users not in members:
                raise web.HTTPError(403, f"you may not read the usage of {users!r}: not in a group you may read")
            users = members if users is None else users
        try:
            since, until = usage.parse_period(args["since"], args["until"], time.time())
            by = args["by"] or "user"
            filters = {"user": users, "charged_to": args["group"], "profile": args["profile"], "device": args["device"]}
            if by not in usage.BREAKDOWNS:
                raise usage.UsageError(f"cannot break usage down by {by!r}; use one of {', '.join(usage.BREAKDOWNS)}")
            svc = await _service(self)
            store = svc.ops.store

            def read():
                return store.usage(since, until, by, **filters)

            if store is None:
                raise usage.UsageError("GPU usage records are off on this hub")
            rows = await svc.ops.query(read)
        except usage.UsageError as e:
            raise web.HTTPError(400, str(e)) from None
        self.write(
            {
                "since": _iso(since),
                "until": _iso(until),
                "by": by,
                "unit": "device-hours (one hour of one GPU or one MIG slice)",
                "rows": rows,
            }
        )


class StopHandler(APIHandler):
    @needs_scope("delete:servers")
    async def delete(self, user_name: str, server_name: str = ""):
        user = self.find_user(user_name)
        if user is None or server_name not in user.spawners or not user.spawners[server_name].active:
            raise web.HTTPError(404, f"{user_name} has no running server {server_name!r}")
        spawner = user.spawners[server_name]
        if spawner.pending:
            raise web.HTTPError(409, f"the server is {spawner.pending}; try again when that is done")
        svc = await _service(self)
        caller = self.current_user
        own = getattr(caller, "kind", None) == "user" and caller.name == user_name
        svc.ops.ask_stop(f"{user_name}/{server_name}", "user" if own else "admin")
        await self.stop_single_user(user, server_name)
        self.set_status(204)


def handlers() -> list[tuple[str, type]]:
    """For `c.JupyterHub.extra_handlers` (JupyterHub puts them under /hub/)."""
    return admin_api.handlers() + [
        (r"/api/gpuhub/notice", NoticeHandler),
        (r"/api/gpuhub/usage", UsageHandler),
        (r"/api/gpuhub/servers/([^/]+)/?", StopHandler),
        (r"/api/gpuhub/servers/([^/]+)/([^/]+)", StopHandler),
    ]
