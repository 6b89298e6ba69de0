"""Lab admins' endpoints in the hub's REST API (docs/api.md): the GPU map, the queue, quotas, the audit log.

- `GET  /hub/api/gpuhub/devices` (view) and `POST /hub/api/gpuhub/devices/UUID/lift` (manage)
- `GET  /hub/api/gpuhub/queue` (view) and `DELETE /hub/api/gpuhub/queue/USER[/SERVER]` (manage)
- `GET  /hub/api/gpuhub/quotas` (view) and `PUT /hub/api/gpuhub/quotas/GROUP` (manage)
- `GET  /hub/api/gpuhub/audit?group=&limit=` (view)

Permissions are JupyterHub's own: `needs_scope` for gpuhub's scopes, and the caller's `read:servers` /
`read:groups` filters cut the rows (an instructor sees their course). Changes are written to the audit log
(`spawner/audit.py`) after they are made. Quotas are the group property `gpuhub`, written through the
hub's ORM and committed here, as JupyterHub's own groups handler does; the spawner reads them at each start.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import Scope
from tornado import web

from . import admin_views, audit, quota
from .gpu_service import LiftRefused, owner_key
from .inventory import canonical_uuid
from .roles import MANAGE, VIEW

_audit_thread = ThreadPoolExecutor(1, thread_name_prefix="gpuhub-audit")
_audit_stores: dict[tuple[str, str], audit.AuditStore] = {}


def _audit_store(db_url: str, hub_id: str) -> audit.AuditStore:
    """Runs in the audit thread: one store (engine) per database and hub, made on first use."""
    key = (db_url, hub_id)
    if key not in _audit_stores:
        _audit_stores[key] = audit.AuditStore(db_url, hub_id)
    return _audit_stores[key]


def requires(scope: str):
    """Like JupyterHub's `needs_scope`, for gpuhub's custom scopes (which `needs_scope` cannot name:
    it checks scopes when the module is imported, before the hub has defined its custom ones)."""

    def decorate(method):
        @functools.wraps(method)
        async def checked(self, *args, **kwargs):
            if self.current_user is None:
                raise web.HTTPError(403, "Missing or invalid credentials.")
            if scope not in self.parsed_scopes:
                raise web.HTTPError(403, f"this needs the {scope} scope ({_WHO_HAS[scope]} have it)")
            return await method(self, *args, **kwargs)

        return checked

    return decorate


_WHO_HAS = {VIEW: "lab admins and instructors", MANAGE: "lab admins"}


class GPUHubAdminHandler(APIHandler):
    """What every endpoint here needs: the GPU service, the caller's read filters, the audit log."""

    async def service(self):
        from .hub_api import _service

        return await _service(self)

    def may_read_user(self):
        """user name -> may the caller see this user's servers (`read:servers`, filters included)?"""
        if self.parsed_scopes.get("read:servers") is Scope.ALL:
            return lambda name: True  # a lab admin: no lookups
        allowed = self.get_scope_filter("read:servers")
        cache: dict[str, bool] = {}

        def check(name: str) -> bool:
            if name not in cache:
                found = orm.User.find(self.db, name) or SimpleNamespace(name=name, groups=[])
                cache[name] = bool(allowed(found, kind="user"))
            return cache[name]

        return check

    def may_read_group(self):
        allowed = self.get_scope_filter("read:groups")
        return lambda group: bool(allowed(group, kind="group"))

    def reads_everything(self) -> bool:
        parsed = self.parsed_scopes
        return all(parsed.get(s) is Scope.ALL for s in ("read:servers", "read:groups"))

    @property
    def who(self) -> str:
        caller = self.current_user
        return getattr(caller, "name", "") or "unknown"

    @property
    def hub_id(self) -> str:
        """The spawner's `hub_id` (config, else its default): the audit log needs no GPU service."""
        from .spawner import GPUDockerSpawner

        section = self.settings["config"].GPUDockerSpawner
        return section.hub_id if "hub_id" in section else GPUDockerSpawner.hub_id.default_value

    async def in_audit(self, fn, *args, **kwargs):
        url = self.db.get_bind().url.render_as_string(hide_password=False)
        hub_id = self.hub_id
        return await asyncio.get_running_loop().run_in_executor(
            _audit_thread, lambda: fn(_audit_store(url, hub_id), *args, **kwargs)
        )

    async def record(self, action: str, target: str, old: Any, new: Any) -> None:
        """One audit row for a change already made; a failed write is logged (the change stands)."""
        try:
            await self.in_audit(audit.AuditStore.record, self.who, action, target, old, new)
        except Exception as e:
            self.log.error("gpuhub: could not write the audit log (%s %s by %s): %s", action, target, self.who, e)


# --- the GPU map ---------------------------------------------------------------------------------------


def _devices_json(handler: GPUHubAdminHandler, svc, only: str | None = None) -> list[dict]:
    ledger = svc.ledger
    devices = [d for d in ledger.devices.values() if only is None or d.uuid == only]
    holders = {uuid: ledger.leases[lid] for uuid, lid in ledger.holder.items()}
    telemetry = {row["device"]: row["telemetry"] for row in svc.ops.device_status()}
    quarantine = {d.uuid: ledger.quarantined(d.uuid) for d in devices}
    return admin_views.gpu_map(
        devices, holders, svc.ops.servers, telemetry, quarantine, svc.liftable, handler.may_read_user()
    )


class DevicesHandler(GPUHubAdminHandler):
    @requires(VIEW)
    async def get(self):
        svc = await self.service()
        self.write({"telemetry_interval": svc.ops.interval, "gpus": _devices_json(self, svc)})


class LiftHandler(GPUHubAdminHandler):
    @requires(MANAGE)
    async def post(self, uuid: str):
        svc = await self.service()
        uuid = canonical_uuid(uuid)
        if uuid not in svc.ledger.devices:
            raise web.HTTPError(404, f"no GPU device {uuid} on this hub")
        try:
            lifted = await svc.lift_device(uuid)
        except LiftRefused as e:
            raise web.HTTPError(409, str(e)) from None
        await self.record("lift", uuid, {"quarantine": lifted}, {"quarantine": []})
        (gpu,) = _devices_json(self, svc, only=uuid)
        self.write(gpu["devices"][0])


# --- the queue ---------------------------------------------------------------------------------------------


class QueueHandler(GPUHubAdminHandler):
    @requires(VIEW)
    async def get(self):
        svc = await self.service()
        rows = admin_views.queue_rows(svc.ledger.waiting(), svc.position, time.time(), self.may_read_user())
        self.write({"queue": rows})


class DequeueHandler(GPUHubAdminHandler):
    @requires(MANAGE)
    async def delete(self, user: str, server: str = ""):
        svc = await self.service()
        owner = owner_key(user, server)
        position = svc.position(owner)
        waiter = svc.remove_waiter(owner)
        if waiter is None:
            raise web.HTTPError(404, f"{owner} is not waiting for a GPU")
        old = {
            "request": waiter.request.label,
            "position": position[0] if position else None,
            "since": admin_views.iso(waiter.since) if waiter.since else None,
            "charged_to": waiter.charged_to,
        }
        await self.record("dequeue", owner, old, None)
        self.set_status(204)


# --- quotas and budgets ----------------------------------------------------------------------------------------


def _budget_hours(store, wanted: list[tuple[str, str, float, float]]) -> dict:
    """Runs in the usage store's thread. `wanted`: (group, scope, window start, now) per budget.

    One grouped query per budget (per user budget: every member's hours at once), never one per user.
    """
    found: dict[tuple[str, str], Any] = {}
    for group, scope, start, now in wanted:
        if now <= start:
            found[(group, scope)] = 0.0 if scope == "group" else {}
        elif scope == "group":
            found[(group, scope)] = store.used_hours(start, now, charged_to=group)
        else:
            rows = store.usage(start, now, "user", charged_to=group)
            found[(group, scope)] = {row["key"]: row["gpu_hours"] for row in rows}
    return found


async def quota_rows(handler: GPUHubAdminHandler, groups: list[orm.Group]) -> list[dict]:
    """The `groups` objects of GET /quotas (budgets' used hours read off the event loop)."""
    config = quota.GPUQuota(config=handler.settings["config"])
    manage = MANAGE in handler.parsed_scopes
    now = time.time()
    rows, wanted, members, windows = [], [], {}, {}
    for g in groups:
        runtime = (g.properties or {}).get(quota.PROPERTY) if isinstance(g.properties, dict) else None
        names = [u.name for u in g.users]
        row, effective = admin_views.group_quota_row(g.name, len(names), config.groups.get(g.name), runtime, manage)
        rows.append(row)
        if effective is not None and effective.budgets:
            windows[g.name] = admin_views.budget_windows(effective, now)
            members[g.name] = names
            wanted += [(g.name, scope, start, now) for scope, (_, start, _) in windows[g.name].items()]
    used: dict = {}
    if wanted:
        try:
            svc = await handler.service()
            used = await svc.ops.query(_budget_hours, svc.ops.store, wanted)
        except Exception as e:  # usage records off or unreachable: budgets show without their use
            handler.log.warning("gpuhub: budget use unavailable for the quotas page: %s", e)
    for row in rows:
        if row["name"] in windows:
            row["budgets"] = admin_views.budgets_json(
                windows[row["name"]],
                used.get((row["name"], "group")),
                members[row["name"]],
                used.get((row["name"], "user")),
            )
    return rows


class QuotasHandler(GPUHubAdminHandler):
    @requires(VIEW)
    async def get(self):
        config = quota.GPUQuota(config=self.settings["config"])
        try:
            default = quota.written_quota(quota.Quota(quota.DEFAULT_SOURCE, **quota.parse(config.default, "default")))
        except quota.QuotaError as e:
            raise web.HTTPError(500, f"c.GPUQuota.default is malformed: {e}") from None
        readable = self.may_read_group()
        groups = [g for g in self.db.query(orm.Group).order_by(orm.Group.name) if readable(g)]
        self.write({"default": default, "keys": list(quota.KEYS), "groups": await quota_rows(self, groups)})


class QuotaHandler(GPUHubAdminHandler):
    def profile_slugs(self) -> set[str]:
        listed = self.settings["config"].GPUDockerSpawner.get("profile_list", [])
        return {p["slug"] for p in listed if isinstance(p, dict) and isinstance(p.get("slug"), str)}

    @requires(MANAGE)
    async def put(self, name: str):
        group = orm.Group.find(self.db, name)
        if group is None:
            raise web.HTTPError(404, f"no group named {name!r}")
        body = self.get_json_body()
        try:
            parsed = quota.parse(body, f"group {name!r}")
        except quota.QuotaError as e:
            raise web.HTTPError(400, str(e)) from None
        # As the GPU file's quotas are checked at hub start: a slug no profile has is a typo.
        missing = (parsed.get("profiles") or set()) - self.profile_slugs()
        if missing and self.profile_slugs():
            raise web.HTTPError(400, f"quota of group {name!r} names unknown profile(s): {', '.join(sorted(missing))}")
        new = quota.written(parsed)
        props = dict(group.properties or {}) if isinstance(group.properties, dict) else {}
        old = props.get(quota.PROPERTY)
        if old != (new or None):  # the same quota again is no change: nothing to write or record
            if new:
                props[quota.PROPERTY] = new
            else:
                props.pop(quota.PROPERTY, None)
            group.properties = props
            self.db.commit()
            self.log.info("gpuhub: %s set the quota of group %s: %s -> %s", self.who, name, old, new or None)
            await self.record("quota", name, old, new or None)
        (row,) = await quota_rows(self, [group])
        self.write(row)


# --- the audit log ------------------------------------------------------------------------------------


class AuditHandler(GPUHubAdminHandler):
    @requires(VIEW)
    async def get(self):
        group = self.get_argument("group", "") or None
        text = self.get_argument("limit", "100")
        try:
            limit = int(text)
        except ValueError:
            limit = 0
        if not 1 <= limit <= audit.MAX_LIMIT:
            raise web.HTTPError(400, f"limit must be a whole number from 1 to {audit.MAX_LIMIT}, got {text!r}")
        if self.reads_everything():
            entries = await self.read_audit(limit, group)
        else:
            # Cut to what the caller may read, on the event loop (the ORM is its), from the newest entries.
            may_user, may_group = self.may_read_user(), self.may_read_group()
            groups = {g.name: g for g in self.db.query(orm.Group)}
            if group is not None and (group not in groups or not may_group(groups[group])):
                raise web.HTTPError(403, f"you may not read group {group!r}")
            found = await self.read_audit(audit.MAX_LIMIT, group)
            entries = [e for e in found if _visible(e, groups, may_user, may_group)][:limit]
        self.write({"entries": [e.as_json() for e in entries]})

    async def read_audit(self, limit: int, group: str | None) -> list[audit.Entry]:
        try:
            return await self.in_audit(audit.AuditStore.entries, limit, target=group)
        except audit.AuditError as e:
            raise web.HTTPError(400, str(e)) from None


def _visible(entry: audit.Entry, groups: dict, may_user, may_group) -> bool:
    if entry.action == "quota":
        return entry.target in groups and may_group(groups[entry.target])
    if entry.action == "dequeue":
        return may_user(entry.target.partition("/")[0])
    return True  # a device's quarantine: every device is on everyone's map


def handlers() -> list[tuple[str, type]]:
    return [
        (r"/api/gpuhub/devices", DevicesHandler),
        (r"/api/gpuhub/devices/([^/]+)/lift", LiftHandler),
        (r"/api/gpuhub/queue", QueueHandler),
        (r"/api/gpuhub/queue/([^/]+)/?", DequeueHandler),
        (r"/api/gpuhub/queue/([^/]+)/([^/]+)", DequeueHandler),
        (r"/api/gpuhub/quotas", QuotasHandler),
        (r"/api/gpuhub/quotas/([^/]+)", QuotaHandler),
        (r"/api/gpuhub/audit", AuditHandler),
    ]
