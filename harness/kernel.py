"""Run code in a user's notebook kernel the way JupyterLab does: the server's REST API to start a
kernel, then Jupyter's messaging protocol over the kernel's websocket, through the hub's proxy.

    with Kernel(hub_url, "ada", token) as k:
        result = k.execute("print(1 + 1)")
        assert result.stdout == "2\n"
"""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


@dataclass
class Result:
    status: str = ""  # "ok", "error", or "" when no reply came (the kernel died or time ran out)
    stdout: str = ""
    error: str = ""  # ename: evalue
    kernel_states: list[str] = field(default_factory=list)  # execution_state values seen on iopub
    replied: bool = False  # the shell's execute_reply came
    idle: bool = False  # the kernel went idle after the cell

    def take(self, msg: dict, msg_id: str) -> None:
        """Fold one message from the kernel's channels into the result of the cell `msg_id`."""
        kind = msg.get("msg_type") or msg["header"]["msg_type"]
        content = msg.get("content") or {}
        if kind == "status":
            self.kernel_states.append(content.get("execution_state", ""))
        if (msg.get("parent_header") or {}).get("msg_id") != msg_id:
            return
        if kind == "stream" and content.get("name") == "stdout":
            self.stdout += content.get("text", "")
        elif kind == "error":
            self.error = f"{content.get('ename')}: {content.get('evalue')}"
        elif kind == "execute_reply":
            self.status = content.get("status", "")
            self.replied = True
        elif kind == "status" and content.get("execution_state") == "idle":
            self.idle = True

    @property
    def done(self) -> bool:
        return self.replied and self.idle

    @property
    def gone(self) -> bool:
        """The kernel was last seen restarting or dead."""
        return bool(self.kernel_states) and self.kernel_states[-1] in ("restarting", "dead")

    @property
    def died(self) -> bool:
        """The kernel went away mid-cell (killed), as JupyterLab would report it."""
        return self.status == "" and any(s in ("restarting", "dead") for s in self.kernel_states)


class Kernel:
    def __init__(self, hub_url: str, user: str, token: str, server: str = "", timeout: float = 60):
        self.base = f"{hub_url.rstrip('/')}/user/{user}/{server + '/' if server else ''}"
        self.headers = {"Authorization": f"token {token}"}
        self.timeout = timeout
        self.id = ""

    def __enter__(self) -> Kernel:
        r = requests.post(f"{self.base}api/kernels", json={"name": "python3"}, headers=self.headers, timeout=60)
        r.raise_for_status()
        self.id = r.json()["id"]
        return self

    def __exit__(self, *exc) -> None:
        try:
            requests.delete(f"{self.base}api/kernels/{self.id}", headers=self.headers, timeout=30)
        except requests.RequestException:
            pass

    def state(self) -> str:
        r = requests.get(f"{self.base}api/kernels/{self.id}", headers=self.headers, timeout=30)
        return r.json().get("execution_state", "") if r.ok else f"HTTP {r.status_code}"

    def execute(self, code: str, timeout: float | None = None) -> Result:
        # In a thread of its own: the caller's thread may already run an event loop (Playwright's
        # sync API leaves one for the rest of a test session), and asyncio.run refuses to nest.
        with ThreadPoolExecutor(1, thread_name_prefix="kernel-client") as pool:
            return pool.submit(asyncio.run, self._execute(code, timeout or self.timeout)).result()

    async def _execute(self, code: str, timeout: float) -> Result:
        url = self.base.replace("http", "ws", 1) + f"api/kernels/{self.id}/channels"
        ws = await websocket_connect(HTTPRequest(url, headers=self.headers, connect_timeout=60, request_timeout=60))
        msg_id = uuid.uuid4().hex
        ws.write_message(json.dumps(execute_request(code, msg_id)))
        result = Result()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not result.done:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    raw = await asyncio.wait_for(ws.read_message(), left)
                except asyncio.TimeoutError:
                    break
                if raw is None:
                    break  # the server closed the channel
                result.take(json.loads(raw), msg_id)
                if result.gone:
                    break
        finally:
            ws.close()
        return result


def execute_request(code: str, msg_id: str) -> dict:
    """A Jupyter execute_request on the shell channel, as JupyterLab sends it over the websocket."""
    return {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "",
            "session": uuid.uuid4().hex,
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": True, "allow_stdin": False},
        "channel": "shell",
        "buffers": [],
    }
