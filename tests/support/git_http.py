"""A real smart-HTTP git server on loopback: ``git http-backend`` (CGI) behind basic auth.

``GitHttpServer(root, user, password)`` serves the bare repositories under ``root`` at
``http://127.0.0.1:PORT/<name>.git``; a request without the right ``Authorization: Basic`` header
gets 401, as GitHub does for a private repository. ``authorized`` counts the requests that carried
the right credentials, so a test can tell the credentials did reach the server.
"""

from __future__ import annotations

import base64
import http.server
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from tests.support.polling import SHUTDOWN_POLL
from tests.support.ports import free_port

TOKEN_USER = "x-access-token"


class GitHttpServer:
    def __init__(self, root: Path, user: str, password: str) -> None:
        self.root = root
        self.port = free_port()
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.authorized = 0
        self.refused = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                self.serve()

            def do_POST(self) -> None:
                self.serve()

            def serve(self) -> None:
                if self.headers.get("Authorization") != server.expected:
                    server.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.authorized += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                env = {
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH": "/usr/bin:/bin",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": parts.path,
                    "QUERY_STRING": parts.query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": "git",
                    "REMOTE_ADDR": "127.0.0.1",
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                }
                completed = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True, check=False, timeout=60
                )
                head, _, payload = completed.stdout.partition(b"\r\n\r\n")
                if not _:
                    head, _, payload = completed.stdout.partition(b"\n\n")
                status = 200
                headers: list[tuple[str, str]] = []
                for line in head.decode("latin-1").splitlines():
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=SHUTDOWN_POLL, daemon=True)

    def url(self, name: str, *, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None and password is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}/{name}"

    def start(self) -> GitHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> GitHttpServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def git_argv_recorder(directory: Path) -> tuple[Path, Path]:
    """A ``git`` wrapper that appends its argv, and every git child's (GIT_TRACE), to a file; then runs git.

    Returns ``(wrapper, record)``. Put ``wrapper``'s folder first in PATH, or pass it as ``GitRunner(git=...)``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    record = directory / "git-argv.txt"
    wrapper = directory / "git"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "argv: $*" >> {record}\n'
        f"GIT_TRACE={record} exec /usr/bin/git \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper, record
