"""Who stopped a server, for its usage record's end reason and the hub page's words.

JupyterHub's own `DELETE /hub/api/users/NAME/server[s/SERVER]` is the one door every stop comes
through: the owner's Stop button, an admin's on the admin page, jupyterhub-idle-culler, an
instructor, gpuhub's own limits. The spawner's `stop()` is not told who knocked, so this handler,
which JupyterHub routes before its own, notes the caller and then runs JupyterHub's handler
unchanged. It is given to the hub by the authenticator (`StaffRoles.get_handlers`): handlers
from there are the only ones JupyterHub matches before its defaults.
"""

from __future__ import annotations

from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.scopes import needs_scope

IDLE_CULLER = "idle-culler"  # the service name jupyterhub_config.py gives jupyterhub-idle-culler
OPERATIONS = "gpuhub-operations"  # gpuhub's own limits: they note their reason themselves


def reason_for(caller_kind: str, caller_name: str, user_name: str) -> str | None:
    """The end reason a stop by this caller gets; None: leave what is noted (gpuhub's own stops)."""
    if caller_kind == "service":
        if caller_name == OPERATIONS:
            return None
        return "idle" if caller_name == IDLE_CULLER else "admin"
    return "user" if caller_name == user_name else "admin"


class NotedStopHandler(UserServerAPIHandler):
    @needs_scope("delete:servers")  # checked before anything is noted: a refused stop notes nothing
    async def delete(self, user_name, server_name=""):
        from .spawner import GPUDockerSpawner

        caller = self.current_user
        reason = reason_for(getattr(caller, "kind", "user"), getattr(caller, "name", ""), user_name)
        if reason not in (None, "user"):
            for svc in GPUDockerSpawner._services.values():
                if svc.ops is not None:
                    svc.ops.ask_stop(f"{user_name}/{server_name}", reason)
        return await super().delete(user_name, server_name)  # JupyterHub's own stop, unchanged


def handlers() -> list[tuple[str, type]]:
    """The routes of JupyterHub's server DELETE (apihandlers/users.py), for `Authenticator.get_handlers`."""
    return [
        (r"/api/users/([^/]+)/server", NotedStopHandler),
        (r"/api/users/([^/]+)/servers/([^/]*)", NotedStopHandler),
    ]
