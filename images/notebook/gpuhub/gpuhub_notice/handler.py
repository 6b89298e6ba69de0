"""The browser's side of the notice: GET {base_url}api/gpuhub/notice."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .hub import HubNotice


class NoticeHandler(APIHandler):
    """The hub's current notice for this server, for its own user only.

    Always answers 200 with a JSON object, also when the hub cannot be asked
    (``{"notice": null, "error": ...}``), so the page needs no error handling of its own.
    """

    auth_resource = "gpuhub_notice"
    # Every open tab polls this: the server itself must not count the polls as its own
    # activity (its /api/status). The proxy still sees each request, and JupyterHub's
    # last_activity follows the proxy, so an open tab keeps a server "active" for
    # activity-based culling anyway (JupyterLab's own polling does the same); only
    # GPU-idle culling, which reads the GPU, sees through an open tab.
    _track_activity = False

    def initialize(self, notice: HubNotice) -> None:
        self.notice = notice

    @web.authenticated
    @authorized
    async def get(self) -> None:
        answer = await self.notice.current()
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(answer))
