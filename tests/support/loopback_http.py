"""A real HTTP server on 127.0.0.1 that answers every GET with one fixed status and headers (or, for a path
in ``routes``, that path's), and records the requests it got: a host-only listener, an app redirecting its
health path, or a forward proxy that should never be asked.

``with LoopbackHttp(302, {"Location": "http://127.0.0.1:1/"}) as server:`` then ``server.url`` and
``server.requests`` (each request's path and headers).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.support.polling import SHUTDOWN_POLL


@dataclass
class LoopbackHttp:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    routes: Mapping[str, tuple[int, Mapping[str, str]]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers.items())))
                status, headers = server.routes.get(self.path, (server.status, server.headers))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=SHUTDOWN_POLL, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> LoopbackHttp:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
