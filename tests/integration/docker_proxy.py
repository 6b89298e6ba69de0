"""A fault-injecting proxy for the Docker Engine API, for tests.

It sits between a process that talks to Docker through DOCKER_HOST (a hub and its
docker-py) and the real dockerd, and makes chosen API calls slow, fail, or hang until
the test releases them. Everything else is forwarded byte for byte, so the hub sees
the real engine and real containers; only timing and errors are ours.

    with DockerFaultProxy() as proxy:
        hub_env["DOCKER_HOST"] = proxy.docker_host
        rule = proxy.add("POST", r"^/containers/[^/]+/start$", Hang(), times=1)
        ...  # spawn; the container is "created" while the start is held
        rule.wait_hit()
        rule.release()  # dockerd starts it now, as if it had been slow

How it forwards: one thread per client connection. The request head is parsed and
its body read in full (API bodies are small JSON; a multi-GB build context would be
buffered in memory, so don't point `docker build` through this). The request goes to
dockerd on a fresh unix-socket connection with `Connection: close`, and dockerd's
response bytes are piped back unchanged until dockerd closes; then the client
connection is closed too. Not parsing responses keeps chunked bodies, streams
(/events, logs with follow), HEAD, 204 and 304 exactly as dockerd sent them, and
urllib3 simply opens a new connection for the next call.

Upgrade requests (attach/exec hijacks, `Connection: Upgrade`) keep their Connection
header and are piped both ways, half-closes included.

Rules are tried in the order they were added; the first live one that matches a
request decides what happens to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = ["Delay", "DockerFaultProxy", "Fail", "FailAfter", "Hang", "LogEntry", "Rule"]

# docker-py prefixes every call but /version negotiation with the API version.
_VERSION_PREFIX = re.compile(r"^/v\d+(?:\.\d+)?(?=/)")
_MAX_HEAD = 256 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Fail:
    """Answer with `status` and Docker's error body without contacting dockerd."""

    status: int = 500
    message: str = "injected fault (tests/integration/docker_proxy.py)"


@dataclass(frozen=True)
class FailAfter:
    """Forward the request (the engine acts), discard dockerd's answer, reply with `status`:
    the case of an engine that did the work but whose reply never made it."""

    status: int = 500
    message: str = "injected fault after forwarding (tests/integration/docker_proxy.py)"


@dataclass(frozen=True)
class Delay:
    """Wait `seconds`, then forward."""

    seconds: float


@dataclass(frozen=True)
class Hang:
    """Hold the request until `rule.release()`, the rule's removal, `clear()` or `stop()`; then forward it."""


Action = Fail | FailAfter | Delay | Hang


class LogEntry(NamedTuple):
    time: float
    method: str
    path: str
    outcome: int | str  # dockerd's status, or what a rule did ("Fail(500)", "Hang", ...)


class Rule:
    """One fault: which requests it matches, what it does to them, and how often it has."""

    def __init__(
        self,
        proxy: DockerFaultProxy,
        method: str | None,
        path: str,
        action: Action,
        times: int | None,
        target: str | None,
    ) -> None:
        self.method = method.upper() if method else None
        self.path = re.compile(path)
        self.target = re.compile(target) if target else None
        self.action = action
        self.times = times
        self.hits = 0
        self._proxy = proxy
        self._removed = False
        self._cond = threading.Condition()
        self._held: list[threading.Event] = []

    def __repr__(self) -> str:
        return (
            f"Rule({self.method or '*'} {self.path.pattern!r} -> {self.action!r}, "
            f"hits={self.hits}, times={self.times}, held={self.held})"
        )

    @property
    def active(self) -> bool:
        return not self._removed and (self.times is None or self.hits < self.times)

    @property
    def held(self) -> int:
        """Requests this rule holds right now (Hang)."""
        with self._cond:
            return len(self._held)

    def matches(self, method: str, path: str, target: str) -> bool:
        return (
            (self.method is None or self.method == method)
            and self.path.search(path) is not None
            and (self.target is None or self.target.search(target) is not None)
        )

    def release(self, n: int | None = None) -> int:
        """Let the held requests (all, or the `n` oldest) go on to dockerd; returns how many.
        The rule stays in force: later matches are held again until it is removed or its
        `times` are used up."""
        with self._cond:
            take = self._held if n is None else self._held[:n]
            self._held = self._held[len(take) :]
        for gate in take:
            gate.set()
        return len(take)

    def wait_hit(self, n: int = 1, timeout: float = 30) -> int:
        """Block until at least `n` requests matched this rule; returns the hit count."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.hits >= n, timeout):
                raise TimeoutError(f"{self!r}: {self.hits} of {n} hits after {timeout} s")
            return self.hits

    def _claim(self) -> bool:
        # Under the rule's lock so concurrent requests never exceed `times`.
        with self._cond:
            if not self.active:
                return False
            self.hits += 1
            self._cond.notify_all()
            return True

    def _hold(self) -> threading.Event:
        gate = threading.Event()
        with self._cond:
            if self._removed:
                gate.set()
            else:
                self._held.append(gate)
        return gate

    def _drop(self) -> None:
        with self._cond:
            self._removed = True
        self.release()


class _Request(NamedTuple):
    method: str
    target: str
    path: str  # no version prefix, no query, percent-decoded: what rules match
    head: bytes  # as forwarded to dockerd
    body: bytes  # raw, chunk framing included if the client sent it chunked
    upgrade: bool


class _BadRequest(Exception):
    pass


class _Conn:
    """A client connection and its thread; phase tells stop() what may be cut."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.phase = "head"  # head -> held -> forwarded -> response -> done
        self.thread: threading.Thread | None = None

    def cut(self) -> None:
        # shutdown(), not close(): it wakes the connection's own thread out of recv/select,
        # and that thread closes its sockets itself.
        for s in (self.client, self.upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class DockerFaultProxy:
    """Fault-injecting proxy for the Docker Engine API on a unix socket; see the module docstring."""

    def __init__(
        self,
        upstream: str = "/var/run/docker.sock",
        socket_path: str | None = None,
        orphan_timeout: float = 120,
        stop_grace: float = 5,
    ) -> None:
        self.upstream = upstream.removeprefix("unix://")
        self._tmpdir: str | None = None
        if socket_path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="docker-proxy-")
            socket_path = os.path.join(self._tmpdir, "docker.sock")
        self.socket_path = socket_path
        self.docker_host = f"unix://{socket_path}"
        self.log: list[LogEntry] = []
        self.rules: list[Rule] = []
        # How long to keep reading dockerd's answer for a client that has gone away.
        self.orphan_timeout = orphan_timeout
        # How long stop() lets requests already handed to dockerd finish.
        self.stop_grace = stop_grace
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> DockerFaultProxy:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        listener.bind(self.socket_path)
        # The hub may run as another user than pytest.
        os.chmod(self.socket_path, 0o666)
        listener.listen(256)
        # A timeout so the accept loop notices stop(); closing a listening socket from another
        # thread does not reliably wake accept() on Linux.
        listener.settimeout(0.2)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="docker-proxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Release every held request, stop listening, end all connections, remove the socket."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self.clear()
        # Requests that dockerd is working on (or that were just released) get a grace period so
        # the engine's action completes; streams and idle clients are cut at once.
        deadline = time.monotonic() + self.stop_grace
        while True:
            with self._lock:
                conns = list(self._conns)
            waiting = False
            for c in conns:
                if c.phase in ("held", "forwarded") and time.monotonic() < deadline:
                    waiting = True
                else:
                    c.cut()
            if not waiting:
                break
            time.sleep(0.05)
        for c in conns:
            if c.thread is not None:
                c.thread.join(timeout=2)

    def __enter__(self) -> DockerFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- rules -----------------------------------------------------------------------------

    def add(
        self,
        method: str | None,
        path: str,
        action: Action,
        times: int | None = None,
        target: str | None = None,
    ) -> Rule:
        """A rule for requests with this `method` (None: any) whose path matches the regex `path`
        (re.search on the path without /v1.NN, without the query, percent-decoded), and whose
        full request target (version prefix and query included) matches `target` if given.
        `times` caps how many requests it affects (None: until removed)."""
        if not isinstance(action, Fail | FailAfter | Delay | Hang):
            raise TypeError(f"not a proxy action: {action!r}")
        rule = Rule(self, method, path, action, times, target)
        with self._lock:
            self.rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        """Take the rule out; requests it holds go on to dockerd."""
        with self._lock:
            if rule in self.rules:
                self.rules.remove(rule)
        rule._drop()

    def clear(self) -> None:
        """Remove every rule and release every held request."""
        with self._lock:
            rules, self.rules = self.rules, []
        for rule in rules:
            rule._drop()

    def _decide(self, req: _Request) -> tuple[Rule | None, Action | None]:
        with self._lock:
            rules = list(self.rules)
        for rule in rules:
            if rule.matches(req.method, req.path, req.target) and rule._claim():
                return rule, rule.action
        return None, None

    def _log(self, req: _Request, outcome: int | str) -> None:
        self.log.append(LogEntry(time.time(), req.method, req.path, outcome))

    # --- connections -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            client.settimeout(None)
            conn = _Conn(client)
            conn.thread = threading.Thread(target=self._serve, args=(conn,), name="docker-proxy-conn", daemon=True)
            with self._lock:
                self._conns.add(conn)
            conn.thread.start()

    def _serve(self, conn: _Conn) -> None:
        try:
            self._handle(conn)
        except (OSError, _BadRequest):
            # A client or dockerd that went away mid-exchange; nothing to answer to.
            pass
        finally:
            conn.phase = "done"
            for s in (conn.client, conn.upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()
            with self._lock:
                self._conns.discard(conn)

    def _handle(self, conn: _Conn) -> None:
        reader = _Reader(conn.client)
        try:
            req = _read_request(reader, conn.client)
        except _BadRequest as e:
            _send_error(conn.client, "GET", 400, str(e))
            raise
        if req is None:
            return
        rule, action = self._decide(req)
        if isinstance(action, Fail):
            self._log(req, f"Fail({action.status})")
            _send_error(conn.client, req.method, action.status, action.message)
            return
        if isinstance(action, Delay):
            self._log(req, f"Delay({action.seconds})")
            conn.phase = "held"
            self._stopping.wait(action.seconds)
        elif isinstance(action, Hang):
            assert rule is not None
            self._log(req, "Hang")
            conn.phase = "held"
            rule._hold().wait()
            self._log(req, "released")
        # A client that disconnected while its request was held still gets it forwarded: a
        # client that times out on a slow dockerd doesn't undo the engine's work either, and
        # what tests need is the engine acting late, e.g. a container that starts after the
        # hub gave up on it.
        conn.upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.upstream.connect(self.upstream)
        except OSError as e:
            self._log(req, f"upstream unreachable: {e}")
            with contextlib.suppress(OSError):
                _send_error(conn.client, req.method, 502, f"docker proxy: dockerd at {self.upstream}: {e}")
            return
        conn.upstream.sendall(req.head + req.body + reader.take_buffered())
        conn.phase = "forwarded"
        if isinstance(action, FailAfter):
            self._drain(conn.upstream, req, time.monotonic() + self.orphan_timeout)
            self._log(req, f"FailAfter({action.status})")
            _send_error(conn.client, req.method, action.status, action.message)
            return
        self._pipe(conn, req)

    def _pipe(self, conn: _Conn, req: _Request) -> None:
        client, upstream = conn.client, conn.upstream
        assert upstream is not None
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ)
        sel.register(upstream, selectors.EVENT_READ)
        client_open, answered = True, False
        orphan_deadline: float | None = None
        try:
            while True:
                timeout = None if orphan_deadline is None else orphan_deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    self._log(req, "orphan timeout")
                    return
                for key, _ in sel.select(timeout):
                    if key.fileobj is upstream:
                        data = upstream.recv(_CHUNK)
                        if not data:
                            return
                        if not answered:
                            answered = True
                            conn.phase = "response"
                            self._log(req, _status_of(data))
                        if client_open:
                            client.sendall(data)  # the client gone: OSError ends the exchange
                        continue
                    try:
                        data = client.recv(_CHUNK)
                    except OSError:
                        data = b""
                    if data:
                        # Only upgraded streams carry client bytes after the request.
                        upstream.sendall(data)
                        continue
                    client_open = False
                    sel.unregister(client)
                    if req.upgrade:
                        # Half-close, as docker-py does when stdin of an attach ends.
                        with contextlib.suppress(OSError):
                            upstream.shutdown(socket.SHUT_WR)
                    elif answered:
                        # The client stopped reading a response (e.g. left /events); dockerd sees it go.
                        return
                    else:
                        # dockerd has the request but hasn't answered: let it finish its work
                        # rather than have it see a dropped connection and perhaps cancel.
                        orphan_deadline = time.monotonic() + self.orphan_timeout
        finally:
            sel.close()

    def _drain(self, upstream: socket.socket, req: _Request, deadline: float) -> None:
        answered = False
        while time.monotonic() < deadline:
            upstream.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = upstream.recv(_CHUNK)
            except TimeoutError:
                break
            if not data:
                return
            if not answered:
                answered = True
                self._log(req, _status_of(data))


class _Reader:
    """Buffered reads from a socket, for the request head and body."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(_CHUNK)
        self.buf += data
        return bool(data)

    def until(self, delim: bytes, limit: int) -> bytes | None:
        """Bytes up to and including `delim`; None on EOF before any byte."""
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out, self.buf = self.buf[: i + len(delim)], self.buf[i + len(delim) :]
                return out
            if len(self.buf) > limit:
                raise _BadRequest("request head too large")
            if not self._fill():
                if self.buf:
                    raise _BadRequest("connection closed inside the request head")
                return None

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise _BadRequest("connection closed inside the request body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def take_buffered(self) -> bytes:
        out, self.buf = self.buf, b""
        return out


def _read_request(reader: _Reader, client: socket.socket) -> _Request | None:
    raw = reader.until(b"\r\n\r\n", _MAX_HEAD)
    if raw is None:
        return None
    lines = raw[:-4].decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _BadRequest(f"bad request line {lines[0]!r}") from None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    lower = {name.lower(): value for name, value in headers}
    connection_tokens = {t.strip().lower() for t in lower.get("connection", "").split(",")}
    upgrade = "upgrade" in connection_tokens and "upgrade" in lower

    if lower.get("expect", "").lower() == "100-continue":
        # The body is read before dockerd is asked, so the client's go-ahead has to come from here.
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in lower.get("transfer-encoding", "").lower():
        body = _read_chunked(reader)
    else:
        try:
            length = int(lower.get("content-length", "0"))
        except ValueError:
            raise _BadRequest("bad Content-Length") from None
        body = reader.exact(length)

    drop = {"expect"} if upgrade else {"connection", "keep-alive", "proxy-connection", "expect"}
    out = [f"{method} {target} {version}"]
    out += [f"{name}: {value}" for name, value in headers if name.lower() not in drop]
    if not upgrade:
        # One request per upstream connection: dockerd closes after answering, which is how the
        # proxy knows a response (chunked, streamed or bodiless) is complete without parsing it.
        out.append("Connection: close")
    head = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")

    path = urlsplit(target).path
    path = unquote(_VERSION_PREFIX.sub("", path))
    return _Request(method.upper(), target, path, head, body, upgrade)


def _read_chunked(reader: _Reader) -> bytes:
    parts = []
    while True:
        size_line = reader.until(b"\r\n", 4096)
        if size_line is None:
            raise _BadRequest("connection closed inside a chunked body")
        parts.append(size_line)
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise _BadRequest(f"bad chunk size {size_line!r}") from None
        if size == 0:
            # Trailers, then the empty line that ends the body.
            while True:
                line = reader.until(b"\r\n", _MAX_HEAD)
                if line is None:
                    raise _BadRequest("connection closed inside chunked trailers")
                parts.append(line)
                if line == b"\r\n":
                    return b"".join(parts)
        parts.append(reader.exact(size + 2))


def _status_of(data: bytes) -> int | str:
    first = data.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = first.split(" ", 2)
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1])
    return f"unparsed: {first[:60]!r}"


def _send_error(client: socket.socket, method: str, status: int, message: str) -> None:
    body = json.dumps({"message": message}).encode() + b"\n"
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected"
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    client.sendall(head if method == "HEAD" else head + body)
