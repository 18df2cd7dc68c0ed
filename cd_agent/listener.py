"""The CD agent's own small HTTP listener: ``CD_DASHBOARD_HOST:CD_DASHBOARD_PORT`` (loopback:8002 by default).

Routes::

    POST /hooks/registry/<CD_HOOK_TOKEN>   a registry's push notification: a hint to poll now (cd_agent/hints.py)
    GET  /healthz                          200 "ok"
    anything else                          the private pages (cd_agent/status_pages.py), 404 when unknown

Built on the standard library's ``ThreadingHTTPServer``: the watcher stays lean (no web framework, no
event loop resident in an idle ``cd-agent watch``; ``bench/idle_memory.py`` measures it). At most
:data:`MAX_CONNECTIONS` requests are served at once (more are closed unanswered), each socket gives up
after :data:`SOCKET_TIMEOUT_S` of silence, and bodies over :data:`MAX_HOOK_BODY` are refused unread.

Who may read what:

- The hook route exists only with ``CD_HOOK_TOKEN``; its token sits in the path (the only secret a
  Docker Hub webhook can carry), compared in constant time; a wrong one is answered as an unknown path.
  It is the one route meant to be exposed (through a reverse proxy or a tunnel); it answers any Host.
- The private pages: with ``CD_DASHBOARD_TOKEN`` every one needs it (``Authorization: Bearer``, or a
  Basic password for browsers). Without it they answer only requests from a loopback address whose
  ``Host`` is a loopback name or ``CD_DASHBOARD_HOST`` (a DNS-rebinding page names its own domain; the
  CI dashboard's rule, ``shared.host_check.allows_host``), and
  every answer says ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from loguru import logger
from pydantic import SecretStr

from cd_agent.errors import CdError
from cd_agent.hints import NotAHint, pushes_named
from shared.access_tokens import token_matches
from shared.host_check import allows_host, own_names
from shared.settings import is_loopback_host

MAX_HOOK_BODY = 256 * 1024
MAX_CONNECTIONS = 64
SOCKET_TIMEOUT_S = 10.0
HOOK_PREFIX = "/hooks/registry/"
REALM = "pi-cicd cd-agent"


class ListenerError(CdError):
    """The listener cannot start (its address is in use, or cannot be bound)."""


class Hints(Protocol):
    """Who polls early: ``cd_agent.apps_watch.AppsWatch``. ``pushes``: each repository named, with the
    tags named for it. Returns the names of the apps hinted."""

    def hint(self, pushes: Mapping[str, frozenset[str]]) -> list[str]: ...


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: ``private`` ones carry ``Cache-Control: no-store``."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)
    private: bool = True

    @classmethod
    def json(cls, status: int, data: Any, *, private: bool = True) -> Answer:
        return cls(status, json.dumps(data).encode() + b"\n", "application/json", private=private)

    @classmethod
    def text(cls, status: int, text: str, *, private: bool = True) -> Answer:
        return cls(status, text.encode() + b"\n", private=private)


@dataclass(frozen=True)
class Request:
    """What a page needs of a request."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]


Pages = Callable[[Request], Answer | None]


def first_page(*pages: Pages) -> Pages:
    """The pages of each of ``pages`` in turn: the first answer wins."""

    def answer(request: Request) -> Answer | None:
        for page in pages:
            found = page(request)
            if found is not None:
                return found
        return None

    return answer


@dataclass(frozen=True)
class ListenerConfig:
    host: str
    port: int
    dashboard_token: SecretStr | None = None
    hook_token: SecretStr | None = None


class Listener:
    """The listener of ``config``, serving ``pages`` and, with a hook token, hints to ``hints``; in a thread."""

    def __init__(self, config: ListenerConfig, hints: Hints, pages: Pages) -> None:
        self.config = config
        self._hints = hints
        self._pages = pages
        self._own_names = own_names(config.host)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (``CD_DASHBOARD_PORT``, or the one the system chose for port 0)."""
        if self._server is None:
            raise ListenerError("the listener has not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        try:
            self._server = _Server((self.config.host, self.config.port), _handler_for(self))
        except OSError as exc:
            raise ListenerError(
                f"cannot listen on {self.config.host}:{self.config.port} (CD_DASHBOARD_HOST/CD_DASHBOARD_PORT): "
                f"{exc.strerror or exc}"
            ) from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="cd-listener", daemon=True)
        self._thread.start()
        hook = "with the registry hook" if self.config.hook_token is not None else "no registry hook (CD_HOOK_TOKEN)"
        logger.info("status page on http://{}:{}/ ({})", _url_host(self.config.host), self.port, hook)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def answer(self, request: Request, body: Callable[[int], bytes | None], peer: str) -> Answer:
        """The answer to ``request``; ``body(limit)`` reads its body (None when over ``limit``)."""
        if request.path.startswith(HOOK_PREFIX) and self.config.hook_token is not None:
            return self._hook(request, body, self.config.hook_token)
        if request.path.startswith(HOOK_PREFIX):
            return Answer.text(404, "not found: no registry hook here (CD_HOOK_TOKEN is not set)", private=False)
        if request.path == "/healthz":
            return Answer.text(200, "ok", private=False)
        refused = self._refusal(request, peer)
        if refused is not None:
            return refused
        page = self._pages(request)
        return page if page is not None else Answer.text(404, f"not found: {request.path}")

    def _refusal(self, request: Request, peer: str) -> Answer | None:
        token = self.config.dashboard_token
        if token is not None:
            if token_matches(token, request.headers.get("authorization")):
                return None
            return Answer(
                401, b"401 Unauthorized: the status page needs CD_DASHBOARD_TOKEN (Authorization: Bearer or Basic)\n",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
            )
        if not is_loopback_host(peer):
            return Answer.text(403, "403 Forbidden: set CD_DASHBOARD_TOKEN to read these pages beyond loopback")
        if not allows_host(request.headers.get("host"), self._own_names):
            return Answer.text(
                421, "421 Misdirected Request: this page answers only to localhost and CD_DASHBOARD_HOST"
            )
        return None

    def _hook(self, request: Request, body: Callable[[int], bytes | None], token: SecretStr) -> Answer:
        presented = request.path[len(HOOK_PREFIX):]
        if not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
            return Answer.text(404, "not found", private=False)  # the same as no route: a guess learns nothing
        if request.method != "POST":
            return Answer(405, b"405 Method Not Allowed: POST a push notification\n", headers={"Allow": "POST"})
        data = body(MAX_HOOK_BODY)
        if data is None:
            return Answer.text(
                413, f"413 Payload Too Large: a hook body is at most {MAX_HOOK_BODY} bytes, with a Content-Length"
            )
        try:
            pushes = pushes_named(data)
        except NotAHint as exc:
            return Answer.json(400, {"error": str(exc)})
        polled = self._hints.hint(pushes)
        if not polled:
            named = ", ".join(sorted(pushes)) or "no pushed tag"
            return Answer.json(202, {"ignored": f"no app watches {named}"})
        return Answer.json(202, {"polling": polled})


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _Server(ThreadingHTTPServer):
    """One thread per request, at most ``MAX_CONNECTIONS`` at once; daemon threads (a stop never waits on one)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the limit: closed unanswered
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _handler_for(listener: Listener) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT_S
        server_version = "pi-cicd-cd-agent"
        sys_version = ""

        def do_GET(self) -> None:
            self._serve()

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_POST(self) -> None:
            self._serve()

        def _serve(self, *, head: bool = False) -> None:
            path, _, query = self.path.partition("?")
            request = Request(
                self.command, path, query, {key.lower(): value for key, value in self.headers.items()}
            )
            try:
                answer = listener.answer(request, self._read_body, self.client_address[0])
            except Exception as exc:  # a page's bug answers 500 and one log line, never kills the listener
                logger.opt(exception=exc).error("the status page failed on {} {}: {!r}", self.command, path, exc)
                answer = Answer.text(500, "500 Internal Server Error")
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            if answer.private:
                self.send_header("Cache-Control", "no-store")
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if not head:
                self.wfile.write(answer.body)
            self.close_connection = True

        def _read_body(self, limit: int) -> bytes | None:
            length_text = self.headers.get("Content-Length")
            if length_text is None or not length_text.strip().isdigit():
                return None if self.headers.get("Transfer-Encoding") else b""
            length = int(length_text)
            if length > limit:
                return None
            return self.rfile.read(length)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the hook's path holds its token: no access log

    return Handler
