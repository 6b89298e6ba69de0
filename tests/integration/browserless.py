"""A user's HTTP session against gpuhub: the hub's login form, the spawn API and
the server's Jupyter API through the proxy, the way a browser does it."""

from __future__ import annotations

import requests


class UserSession:
    def __init__(self, hub_url: str, name: str):
        self.hub_url = hub_url
        self.name = name
        self.http = requests.Session()

    def _xsrf(self, path: str) -> str:
        for cookie in self.http.cookies:
            if cookie.name == "_xsrf" and path.startswith(cookie.path or "/"):
                return cookie.value
        return ""

    def login(self, password: str) -> requests.Response:
        self.http.get(f"{self.hub_url}/hub/login", timeout=30).raise_for_status()
        return self.http.post(
            f"{self.hub_url}/hub/login",
            data={"username": self.name, "password": password, "_xsrf": self._xsrf("/hub/")},
            timeout=30,
        )

    def hub_api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"X-XSRFToken": self._xsrf("/hub/"), **kwargs.pop("headers", {})}
        return self.http.request(method, f"{self.hub_url}/hub/api{path}", headers=headers, timeout=30, **kwargs)

    def open_lab(self) -> requests.Response:
        """GET /user/<name>/lab: runs the OAuth hand-shake between server and hub, like a browser."""
        return self.http.get(f"{self.hub_url}/user/{self.name}/lab", timeout=60)

    def server_api(self, method: str, path: str, **kwargs) -> requests.Response:
        prefix = f"/user/{self.name}/"
        headers = {"X-XSRFToken": self._xsrf(prefix), **kwargs.pop("headers", {})}
        return self.http.request(method, f"{self.hub_url}{prefix}api{path}", headers=headers, timeout=30, **kwargs)
