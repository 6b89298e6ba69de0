"""OpenAPI 3.1 description of gpuhub's endpoints in the hub's REST API (`/hub/api/gpuhub/...`).

docs/api.md explains them for people; this is the same surface for machines: the hostile-input
tests merge it with JupyterHub's own published description and generate requests against both.
Responses are described by status only: what matters to a client is that every refusal is one
line of JSON (`{"status": 4xx, "message": "..."}`).
"""

from __future__ import annotations

from typing import Any

from . import quota

_ERROR = {
    "description": "Refused: one line saying why",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["status", "message"],
                "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
            }
        }
    },
}
_JSON = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _op(summary: str, ok: str = "200", parameters: list | None = None, body: dict | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": parameters or [],
        "responses": {
            ok: _JSON if ok == "200" else {"description": "Done"},
            "400": _ERROR,
            "403": _ERROR,
            "404": _ERROR,
            "409": _ERROR,
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def _quota_body() -> dict[str, Any]:
    value = {"type": ["string", "integer", "number", "array", "null", "boolean"]}
    return {"type": "object", "properties": {key: value for key in quota.KEYS}, "additionalProperties": True}


def document() -> dict[str, Any]:
    user, server = _path("user", "user name"), _path("server", "server name")
    return {
        "openapi": "3.1.0",
        "info": {"title": "gpuhub's endpoints in the JupyterHub REST API", "version": "1"},
        "servers": [{"url": "/hub/api"}],
        "paths": {
            "/gpuhub/devices": {"get": _op("Every GPU and MIG slice, with holders and quarantines")},
            "/gpuhub/devices/{uuid}/lift": {
                "post": _op("Lift a device's quarantine", parameters=[_path("uuid", "device UUID")])
            },
            "/gpuhub/queue": {"get": _op("The GPU wait queue")},
            "/gpuhub/queue/{user}": {"delete": _op("Remove a waiter", "204", [user])},
            "/gpuhub/queue/{user}/{server}": {"delete": _op("Remove a waiter's named server", "204", [user, server])},
            "/gpuhub/quotas": {"get": _op("Quotas and budgets of every group")},
            "/gpuhub/quotas/{group}": {
                "put": _op("Set a group's quota", parameters=[_path("group", "group name")], body=_quota_body())
            },
            "/gpuhub/audit": {
                "get": _op(
                    "The lab admins' audit trail",
                    parameters=[
                        _query("group", "only entries about this group"),
                        _query("limit", "1 to 1000", type=["integer", "string"]),
                    ],
                )
            },
            "/gpuhub/usage": {
                "get": _op(
                    "GPU-hours from the usage records",
                    parameters=[
                        _query("since", "ISO date or time, or relative (7d)"),
                        _query("until", "ISO date or time, or relative"),
                        _query("by", "user, group, profile, device, model or reason"),
                        _query("user", "one user"),
                        _query("group", "one group"),
                        _query("profile", "one profile"),
                        _query("device", "one device UUID"),
                    ],
                )
            },
            "/gpuhub/servers/{user}": {"delete": _op("Stop a user's server", "204", [user])},
            "/gpuhub/servers/{user}/{server}": {"delete": _op("Stop a named server", "204", [user, server])},
            "/gpuhub/notice": {
                "get": _op("The stop warning or incident of one's own server", parameters=[_query("server", "name")])
            },
        },
        "components": {"securitySchemes": {"token": {"type": "apiKey", "name": "Authorization", "in": "header"}}},
        "security": [{"token": []}],
    }
