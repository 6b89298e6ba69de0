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
    # Every open tab polls this. Counting the polls as activity would keep the server
    # "active" for JupyterHub (and any culler) as long as a tab is open, which is
    # exactly the idleness the notice warns about.
    _track_activity = False

    def initialize(self, notice: HubNotice) -> None:
        self.notice = notice

    @web.authenticated
    @authorized
    async def get(self) -> None:
        answer = await self.notice.current()
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(answer))
