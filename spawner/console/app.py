"""The console's Tornado application; `python -m spawner.console` runs it as the hub's managed service.

JupyterHub starts it with its service environment (`JUPYTERHUB_SERVICE_URL`, `JUPYTERHUB_SERVICE_PREFIX`,
`JUPYTERHUB_API_URL`, the OAuth client settings), which is all it reads: its port is the service's
`url` in jupyterhub_config.py (GPUHUB_CONSOLE_PORT).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from pathlib import Path
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuthCallbackHandler
from tornado import web

from . import handlers
from .hub import Hub

HERE = Path(__file__).resolve().parent


def make_app(prefix: str, api_url: str, hub_home: str = "/hub/home") -> web.Application:
    """`prefix`: where the proxy routes the service (`/services/gpuhub/`); `api_url`: the hub's REST API."""
    p = prefix.rstrip("/") + "/"
    routes = [
        (rf"{p}oauth_callback", HubOAuthCallbackHandler),
        (rf"{p}static/(.*)", web.StaticFileHandler, {"path": str(HERE / "static")}),
        (rf"{p}api/openapi\.json", handlers.OpenAPIHandler),
        (rf"{p}api/me", handlers.MeHandler),
        (rf"{p}api/gpus", handlers.DevicesHandler),
        (rf"{p}api/gpus/([^/]+)/lift", handlers.LiftHandler),
        (rf"{p}api/queue", handlers.QueueHandler),
        (rf"{p}api/queue/([^/]+)", handlers.DequeueHandler),
        (rf"{p}api/queue/([^/]+)/([^/]+)", handlers.DequeueHandler),
        (rf"{p}api/quotas", handlers.QuotasHandler),
        (rf"{p}api/quotas/([^/]+)", handlers.QuotaHandler),
        (rf"{p}api/audit", handlers.AuditHandler),
        (rf"{p}api/usage", handlers.UsageHandler),
        (rf"{p}api/usage\.csv", handlers.UsageCSVHandler),
        (rf"{p}api/.*", handlers.NotFoundHandler),
        (rf"{p}?", handlers.PageHandler),
        (rf"{p}(gpus|queue|quotas|usage)", handlers.PageHandler),
    ]
    return web.Application(
        routes,
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        static_url_prefix=f"{p}static/",
        # Only signs the console's own OAuth cookie; a restart asks the hub again, which needs no click.
        cookie_secret=secrets.token_bytes(32),
        gpuhub_hub=Hub(api_url),
        gpuhub_prefix=p,
        gpuhub_hub_home=hub_home,
        log_function=_log,
    )


def _log(handler: web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING
    # The path only: query strings may carry a token.
    logging.getLogger("gpuhub.console").log(
        level,
        "%d %s %s %.1fms",
        status,
        handler.request.method,
        handler.request.path,
        1000 * handler.request.request_time(),
    )


async def serve() -> None:
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/gpuhub/")
    base = os.environ.get("JUPYTERHUB_BASE_URL", "/")
    app = make_app(prefix, os.environ["JUPYTERHUB_API_URL"], hub_home=base.rstrip("/") + "/hub/home")
    app.listen(url.port or 80, url.hostname or "127.0.0.1", xheaders=True)
    logging.getLogger("gpuhub.console").info("serving %s on %s", prefix, url.netloc)
    stop = asyncio.Event()
    # The hub stops its services with SIGINT or SIGTERM: a quiet exit, not a traceback in its log.
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[gpuhub-console %(levelname)s %(asctime)s] %(message)s")
    asyncio.run(serve())
