"""The OpenAPI 3 description of the console's JSON API (served at `api/openapi.json`). Pure."""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object",
    "required": ["status", "message"],
    "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
}
OBJECT = {"type": "object"}
QUOTA = {
    "type": "object",
    "description": "A group's quota as the config writes it (spawner/quota.py); {} removes it.",
    "properties": {
        "profiles": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string", "enum": ["*"]}]},
        "max_devices_per_user": {"type": "integer", "nullable": True},
        "max_devices_per_group": {"type": "integer", "nullable": True},
        "priority": {"type": "integer"},
        "gpu_hours_per_user": {"type": "string", "nullable": True, "example": "20/week"},
        "gpu_hours_per_group": {"type": "string", "nullable": True, "example": "500/month"},
    },
}
REFUSALS = {
    "400": "malformed input (one line naming it); nothing changed",
    "403": "not signed in, or the caller lacks the scope",
    "404": "no such device, group or waiter",
    "409": "the device is not quarantined, or not liftable",
    "502": "the hub did not answer",
    "504": "the hub did not answer in time",
}
PERIOD = [
    {
        "name": "since",
        "in": "query",
        "schema": {"type": "string"},
        "description": "ISO date or time, or relative (7d, 12h); default 30 days ago",
    },
    {"name": "until", "in": "query", "schema": {"type": "string"}, "description": "as `since`; default now"},
    {
        "name": "by",
        "in": "query",
        "schema": {"type": "string", "enum": ["user", "group", "profile", "device", "model", "reason"]},
    },
]


def _answer(description: str, content_type: str = "application/json", schema: dict | None = None) -> dict:
    return {"description": description, "content": {content_type: {"schema": schema or OBJECT}}}


def _op(summary: str, scope: str, ok: dict[str, Any], params: list | None = None, body: dict | None = None) -> dict:
    responses = {**ok, **{code: _answer(why, schema=ERROR) for code, why in REFUSALS.items()}}
    op: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs the `{scope}` scope.",
        "parameters": params or [],
        "responses": responses,
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _path(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def document(prefix: str) -> dict[str, Any]:
    view, manage = "custom:gpuhub:view", "custom:gpuhub:manage"
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "gpuhub console API",
            "version": "1",
            "description": (
                "The lab admin console's JSON API: the hub's /hub/api/gpuhub endpoints with the caller's own "
                "token, plus aggregates. Send 'Authorization: token <hub token>', or the console's cookie "
                "with the X-XSRFToken header. Errors: one line of JSON."
            ),
        },
        "servers": [{"url": f"{prefix}api"}],
        "components": {
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization"}},
            "schemas": {"Error": ERROR, "Quota": QUOTA},
        },
        "security": [{"token": []}],
        "paths": {
            "/me": {"get": _op("The caller and what the console lets them do", view, {"200": _answer("the caller")})},
            "/gpus": {
                "get": _op(
                    "Every GPU and MIG slice, grouped by physical GPU, with a summary",
                    view,
                    {"200": _answer("devices")},
                )
            },
            "/gpus/{uuid}/lift": {
                "post": _op(
                    "Lift a liftable quarantine",
                    manage,
                    {"200": _answer("the device")},
                    [_path("uuid", "GPU or MIG UUID")],
                )
            },
            "/queue": {"get": _op("Who waits for which device", view, {"200": _answer("the queue")})},
            "/queue/{user}": {
                "delete": _op(
                    "Remove a user's default server from the GPU queue",
                    manage,
                    {"204": {"description": "removed"}},
                    [_path("user", "user name")],
                )
            },
            "/queue/{user}/{server}": {
                "delete": _op(
                    "Remove a named server from the GPU queue",
                    manage,
                    {"204": {"description": "removed"}},
                    [_path("user", "user name"), _path("server", "server name")],
                )
            },
            "/quotas": {
                "get": _op("Quotas and budgets of every group, and the audit trail", view, {"200": _answer("quotas")})
            },
            "/quotas/{group}": {
                "put": _op(
                    "Replace a group's quota (validated by the spawner's own code; effective at the next start)",
                    manage,
                    {"200": _answer("the group as in GET /quotas")},
                    [_path("group", "group name")],
                    {"$ref": "#/components/schemas/Quota"},
                )
            },
            "/audit": {
                "get": _op(
                    "Quota edits, lifted quarantines and removed waiters, newest first",
                    view,
                    {"200": _answer("entries")},
                    [
                        {"name": "group", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    ],
                )
            },
            "/usage": {
                "get": _op(
                    "GPU-hours over a period with bars, end reasons and budgets",
                    f"{view} (the hub also checks custom:gpuhub:read-usage)",
                    {"200": _answer("usage")},
                    PERIOD,
                )
            },
            "/usage.csv": {
                "get": _op(
                    "The same GPU-hours as CSV",
                    f"{view} (the hub also checks custom:gpuhub:read-usage)",
                    {"200": _answer("CSV", "text/csv", {"type": "string"})},
                    PERIOD,
                )
            },
        },
    }
