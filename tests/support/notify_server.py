"""A local HTTP server that records what notification channels post to it.

Apprise's ``json://`` and ``form://`` schemes post to any URL, and ``ntfy://`` / ``gotify://`` take
a custom host, so pointing them here shows exactly what left the agent: the path, the headers and
the decoded body of every request. ``status`` (or ``fail_first``) makes it answer with an error,
as a service that is down or overloaded would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.support.polling import SHUTDOWN_POLL, wait_for


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        """A ``application/x-www-form-urlencoded`` body as a flat dict."""
        return {key: values[-1] for key, values in parse_qs(self.text, keep_blank_values=True).items()}


@dataclass
class NotifyServer:
    """Records every request; answers ``status`` with ``answer`` (JSON), or 500 to the first ``fail_first``."""

    status: int = 200
    answer: dict[str, Any] = field(default_factory=dict)
    fail_first: int = 0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with owner.lock:
                    owner.received.append(Received(self.command, self.path, dict(self.headers.items()), body))
                    failing = len(owner.received) <= owner.fail_first
                status = 500 if failing else owner.status
                payload = json.dumps({"error": "failing on purpose"} if status >= 400 else owner.answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_PUT = do_GET = _record

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs=SHUTDOWN_POLL, name="notify-server", daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def wait_for_requests(self, count: int, timeout: float = 20.0) -> list[Received]:
        wait_for(lambda: len(self.requests) >= count, timeout=timeout, what=f"{count} request(s) on port {self.port}")
        return self.requests


StartNotifyServer = Callable[..., NotifyServer]


@pytest.fixture
def start_notify_server() -> Iterator[StartNotifyServer]:
    """Factory: ``start_notify_server(status=500)``; every server is stopped at teardown."""
    servers: list[NotifyServer] = []

    def start(**kwargs: Any) -> NotifyServer:
        server = NotifyServer(**kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def notify_server(start_notify_server: StartNotifyServer) -> NotifyServer:
    return start_notify_server()
