"""Fault injection in front of real components, on loopback only.

``FaultProxy`` is an HTTP proxy in front of the real docker-registry. Requests whose path matches a
scripted rule get that rule's next fault; everything else is passed through unchanged. The agent's
registry client and dockerd's pulls both go through it when ``CD_IMAGE`` names the proxy's host::

    proxy.script(r"/tags/list", Fault.status_code(500), Fault.status_code(429, retry_after=1), Fault.hang(20))
    proxy.script(r"/blobs/", forever=Fault.reset())      # every blob download cut
    proxy.clear()                                        # faults stop

``DockerSocketRelay`` is a unix socket that relays to ``/var/run/docker.sock`` and can be taken down
and brought back, standing in for a Docker daemon restart without restarting the shared dockerd.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from tests.support.polling import SHUTDOWN_POLL

FaultKind = Literal["status", "hang", "truncate", "reset"]
# Hop-by-hop and length headers are the proxy's own business.
_SKIP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


@dataclass(frozen=True)
class Fault:
    """What the proxy does to one request instead of passing it on."""

    kind: FaultKind
    status: int = 0
    retry_after: int | None = None
    seconds: float = 0.0

    @classmethod
    def status_code(cls, status: int, *, retry_after: int | None = None) -> Fault:
        """Answer ``status`` with a registry-style JSON error (and ``Retry-After`` when given)."""
        return cls("status", status=status, retry_after=retry_after)

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Accept the request and say nothing for ``seconds`` (or until ``clear()``/``close()``), then drop it."""
        return cls("hang", seconds=seconds)

    @classmethod
    def truncate(cls) -> Fault:
        """Pass the request on, but send only half of the answer's body (Content-Length promises all of it)."""
        return cls("truncate")

    @classmethod
    def reset(cls) -> Fault:
        """Reset the connection (TCP RST) without answering."""
        return cls("reset")

    @property
    def label(self) -> str:
        return f"{self.status}" if self.kind == "status" else self.kind


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    queue: deque[Fault]
    forever: Fault | None
    methods: frozenset[str] | None


@dataclass(frozen=True)
class Seen:
    """One request the proxy received: when, what, and what it did (``pass:<status>`` or a fault label)."""

    at: float
    method: str
    path: str
    outcome: str


@dataclass
class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of ``backend`` (``http://127.0.0.1:PORT``)."""

    backend: str
    seen: list[Seen] = field(default_factory=list)
    _rules: list[_Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closing: threading.Event = field(default_factory=threading.Event)
    _resets: set[int] = field(default_factory=set)
    _released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._http = httpx.Client(base_url=self.backend, timeout=60, follow_redirects=False)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_HEAD(self) -> None:
                proxy._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def shutdown_request(self, request: Any) -> None:
                # A reset connection is closed at once (RST); a polite shutdown would send FIN first.
                if id(request) in proxy._resets:
                    proxy._resets.discard(id(request))
                    self.close_request(request)
                    return
                super().shutdown_request(request)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs=SHUTDOWN_POLL, name="fault-proxy", daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of image references that go through the proxy."""
        return f"127.0.0.1:{self._server.server_address[1]}"

    def script(
        self, pattern: str, *faults: Fault, forever: Fault | None = None, methods: tuple[str, ...] | None = None
    ) -> None:
        """Requests whose path matches ``pattern`` (``re.search``) get ``faults`` in turn, then ``forever``
        (if given) for every later one, then pass through. Earlier rules win."""
        rule = _Rule(re.compile(pattern), deque(faults), forever, frozenset(methods) if methods else None)
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        """No more faults: every request passes through, and requests hanging now are dropped."""
        with self._lock:
            self._rules.clear()
            released, self._released = self._released, threading.Event()
        released.set()

    def pending(self) -> int:
        """Scripted faults not served yet (``forever`` faults not counted)."""
        with self._lock:
            return sum(len(rule.queue) for rule in self._rules)

    def outcomes(self, pattern: str = "") -> list[str]:
        """What the proxy did to each request whose path matches ``pattern``, in order."""
        with self._lock:
            return [s.outcome for s in self.seen if re.search(pattern, s.path)]

    def close(self) -> None:
        self._closing.set()
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def _next_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for rule in self._rules:
                if rule.methods is not None and method not in rule.methods:
                    continue
                if not rule.pattern.search(path):
                    continue
                if rule.queue:
                    return rule.queue.popleft()
                if rule.forever is not None:
                    return rule.forever
        return None

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.seen.append(Seen(time.monotonic(), method, path, outcome))

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        method, path = request.command, request.path
        fault = self._next_fault(method, path)
        if fault is not None:
            self._record(method, path, fault.label)
        if fault is None or fault.kind == "truncate":
            self._pass(request, truncate=fault is not None)
        elif fault.kind == "status":
            self._answer_error(request, fault)
        elif fault.kind == "hang":
            with self._lock:
                released = self._released
            if not self._closing.is_set():
                released.wait(fault.seconds)
            self._reset(request)
        else:
            self._reset(request)

    def _pass(self, request: BaseHTTPRequestHandler, *, truncate: bool) -> None:
        # A list, not a dict: dockerd sends one Accept header per manifest type, and a registry that sees
        # only the last one answers with a converted schema 1 manifest instead of the pushed one.
        headers = [(key, value) for key, value in request.headers.items() if key.lower() != "host"]
        try:
            answer = self._http.request(request.command, request.path, headers=headers)
        except httpx.HTTPError:
            self._record(request.command, request.path, "backend-error")
            self._reset(request)
            return
        if not truncate:
            self._record(request.command, request.path, f"pass:{answer.status_code}")
        body = answer.content
        request.send_response(answer.status_code)
        for key, value in answer.headers.multi_items():
            if key.lower() not in _SKIP_HEADERS:
                request.send_header(key, value)
        length = answer.headers.get("content-length", "0") if request.command == "HEAD" else str(len(body))
        request.send_header("Content-Length", length)
        request.end_headers()
        if request.command == "HEAD":
            return
        if truncate:
            request.wfile.write(body[: len(body) // 2])
            request.wfile.flush()
            request.close_connection = True
            return
        request.wfile.write(body)

    def _answer_error(self, request: BaseHTTPRequestHandler, fault: Fault) -> None:
        body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
        request.send_response(fault.status)
        if fault.retry_after is not None:
            request.send_header("Retry-After", str(fault.retry_after))
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)

    def _reset(self, request: BaseHTTPRequestHandler) -> None:
        connection: socket.socket = request.connection
        with contextlib.suppress(OSError):
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._resets.add(id(connection))
        request.close_connection = True


class DockerSocketRelay:
    """A unix socket at ``path`` relaying byte for byte to ``target`` (the real Docker socket).

    ``down()`` closes the listener and every relayed connection, so clients see a dead daemon
    (connection refused / reset); ``up()`` listens again at the same path.
    """

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.target = target
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up()

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def up(self) -> None:
        if self._listener is not None:
            return
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(32)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="docker-relay", daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def close(self) -> None:
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                upstream.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def docker_relay() -> Iterator[DockerSocketRelay]:
    # A short path: unix socket paths are limited to about 100 bytes, pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="picicd-docker-"))
    relay = DockerSocketRelay(directory / "docker.sock")
    yield relay
    relay.close()
    shutil.rmtree(directory, ignore_errors=True)
