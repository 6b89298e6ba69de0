"""gpuhub_notice: the hub's warning before it stops this server, for the browser.

The hub stops a server whose GPU has idled too long, that reached its time limit, or
whose owner used up their GPU-hours. Before it does, it publishes a notice at
``{JUPYTERHUB_API_URL}/gpuhub/notice?server={JUPYTERHUB_SERVER_NAME}``. Only this
server's API token may read it, and the browser must never hold that token, so this
Jupyter server extension asks on the browser's behalf:

    GET {base_url}api/gpuhub/notice  ->  {"notice": null}
                                         {"notice": {"reason", "message", "stop_at", "seconds_left"}}
                                         {"notice": null, "error": "<one line>"}  (hub not reachable)

The JupyterLab extension @gpuhub/notice (share/jupyter/labextensions/@gpuhub/notice in
the image) polls it and shows the banner. Enabled by
etc/jupyter/jupyter_server_config.d/gpuhub_notice.json in the image's virtual environment.
"""

from __future__ import annotations

import os

from jupyter_server.utils import url_path_join

from .handler import NoticeHandler
from .hub import HubNotice

__version__ = "0.1.0"
__all__ = ["HubNotice", "NoticeHandler"]

ROUTE = "api/gpuhub/notice"


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "gpuhub_notice"}]


def _load_jupyter_server_extension(serverapp) -> None:
    web_app = serverapp.web_app
    notice = HubNotice.from_environment(os.environ, log=serverapp.log)
    route = url_path_join(web_app.settings["base_url"], ROUTE)
    web_app.add_handlers(".*$", [(route, NoticeHandler, {"notice": notice})])
    where = notice.url or "nowhere (not started by JupyterHub: JUPYTERHUB_API_URL is not set)"
    serverapp.log.info(f"gpuhub_notice: {route} relays the hub's stop notices from {where}")
