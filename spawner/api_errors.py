"""Every refusal of the hub's REST API says what was wrong, in one line.

A few of JupyterHub's own handlers refuse with a bare `HTTPError(404)` (the deprecated
`/authorizations/token/…` and `/authorizations/cookie/…` endpoints, an unknown token there), which
JupyterHub's API answers as `{"status": 404, "message": ""}`. gpuhub fills such an empty message
with what the status means and what was asked for. Refusals that echo what the caller sent (a user
or group name with a line break in it) get their line breaks and other control characters written
as escapes, so the message stays one line. Everything else is left as it is.
"""

from __future__ import annotations

from http.client import responses

_MAX_PATH = 120


def message_for(status: int, method: str, path: str) -> str:
    """The message of a refusal that came without one: "Not Found: GET /hub/api/…"."""
    what = responses.get(status, "Error")
    shown = path if len(path) <= _MAX_PATH else path[: _MAX_PATH - 1] + "…"
    return f"{what}: {method} {shown}"


def one_line(message: str) -> str:
    """Control characters (line breaks above all) as Python writes them in a string: `\\n`."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in message)


def install() -> None:
    """Wrap JupyterHub's APIHandler.write_error once (the hub's config calls this)."""
    from jupyterhub.apihandlers.base import APIHandler
    from tornado import web

    original = APIHandler.write_error
    if getattr(original, "_gpuhub", False):
        return

    def write_error(self, status_code, **kwargs):
        exc_info = kwargs.get("exc_info")
        exception = exc_info[1] if exc_info else None
        if isinstance(exception, web.HTTPError) and status_code < 500:
            given = exception.get_message() or ""
            text = one_line(given) if given else message_for(status_code, self.request.method, self.request.path)
            if text == given:
                return original(self, status_code, **kwargs)
            exception.args = ()
            if isinstance(getattr(type(exception), "log_message", None), property):
                exception._log_message = text  # tornado >= 6.5 keeps it behind a read-only property
            else:
                exception.log_message = text
        return original(self, status_code, **kwargs)

    write_error._gpuhub = True
    APIHandler.write_error = write_error
