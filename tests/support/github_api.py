"""GitHub's commit statuses endpoint on loopback, answering as GitHub documents it, recording every request.

Oracle: https://docs.github.com/en/rest/commits/statuses#create-a-commit-status (2022-11-28) and
https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api:

* ``POST /repos/{owner}/{repo}/statuses/{sha}`` with ``Authorization: Bearer TOKEN`` and a JSON body
  ``{state, target_url?, description?, context?}`` answers ``201`` with the created status.
* A missing or wrong token: ``401 {"message": "Bad credentials", ...}``.
* Another repository: ``404 {"message": "Not Found"}``.
* A bad state, a description over 140 characters, a sha that is no commit: ``422 Validation Failed``.
* Out of quota: ``403`` with ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset`` (epoch seconds).

* ``GET /repos/{owner}/{repo}/commits/{ref}/statuses`` answers ``200`` with the statuses of ``ref``; for a
  classic token (``scopes`` given) with ``X-OAuth-Scopes`` (its scopes, comma-separated) and
  ``X-Accepted-OAuth-Scopes``, as https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/scopes-for-oauth-apps
  describes; a fine-grained token (``scopes=None``) gets neither header.

``fail_next(n, kind)`` makes the next ``n`` requests fail as ``"500"``, ``"ratelimit"`` or ``"401"``;
``stop()`` closes the port (connection refused) and ``start()`` opens the same port again.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from tests.support.polling import SHUTDOWN_POLL
from tests.support.ports import free_port

DOCS = "https://docs.github.com/rest/commits/statuses#create-a-commit-status"
STATES = ("error", "failure", "pending", "success")
_PATH = re.compile(r"/repos/([^/]+)/([^/]+)/statuses/([^/]+)")


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    answered: int

    @property
    def sha(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class GitHubApi:
    def __init__(self, repo: str, token: str, *, prefix: str = "", scopes: str | None = None) -> None:
        self.repo = repo
        self.scopes = scopes
        self.token = token
        self.prefix = prefix  # "/api/v3" for a GitHub Enterprise Server shape
        self.port = free_port()
        self.requests: list[Received] = []
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._next_id = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def fail_next(self, count: int, kind: str) -> None:
        with self._lock:
            self._failures.extend([kind] * count)

    def created(self) -> list[Received]:
        """The requests answered 201, in order."""
        with self._lock:
            return [r for r in self.requests if r.answered == 201]

    def states(self, sha: str) -> list[tuple[str, str]]:
        return [(r.body["state"], r.body.get("description", "")) for r in self.created() if r.sha == sha and r.body]

    def start(self) -> GitHubApi:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                self.reply(*api.answer_get(self.path, {k.lower(): v for k, v in self.headers.items()}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                self.reply(*api.answer(self.path, dict(self.headers.items()), raw))

            def reply(self, code: int, headers: dict[str, str], body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                for name, value in {**headers, "Content-Type": "application/json; charset=utf-8"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs=SHUTDOWN_POLL, name="github-api", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        code, extra, answer = self._decide(path, {k.lower(): v for k, v in headers.items()}, body)
        with self._lock:
            self.requests.append(Received("POST", path, headers, body if isinstance(body, dict) else None, code))
        return code, extra, answer

    def answer_get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        """``GET .../commits/{ref}/statuses``: the statuses created for ``ref`` (a sha here), newest first."""
        route, _, _query = path.partition("?")
        extra: dict[str, str] = {}
        body: Any
        if headers.get("authorization") != f"Bearer {self.token}":
            code, body = 401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}
        elif not route.startswith(self.prefix) or not (
            match := re.fullmatch(r"/repos/([^/]+)/([^/]+)/commits/([^/]+)/statuses", route[len(self.prefix):])
        ) or f"{match[1]}/{match[2]}" != self.repo:
            code, body = 404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}
        else:
            code = 200
            body = [r.body for r in reversed(self.created()) if r.sha == match[3]]
            if self.scopes is not None:
                extra = {"X-OAuth-Scopes": self.scopes, "X-Accepted-OAuth-Scopes": "repo, repo:status"}
        with self._lock:
            self.requests.append(Received("GET", path, headers, None, code))
        return code, extra, body

    def _decide(
        self, path: str, headers: dict[str, str], body: object
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure == "500":
            return 500, {}, {"message": "Server Error"}
        if failure == "ratelimit":
            reset = int(time.time()) + 2
            return 403, {
                "x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0", "x-ratelimit-used": "5000",
                "x-ratelimit-reset": str(reset), "x-ratelimit-resource": "core",
            }, {"message": "API rate limit exceeded for user ID 1.", "documentation_url": DOCS}
        if failure == "401" or headers.get("authorization") != f"Bearer {self.token}":
            return 401, {}, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}
        if not path.startswith(self.prefix) or not (match := _PATH.fullmatch(path[len(self.prefix):])):
            return 404, {}, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}
        owner, name, sha = match.groups()
        if f"{owner}/{name}" != self.repo:
            return 404, {}, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}
        problems = []
        if not isinstance(body, dict):
            return 400, {}, {"message": "Problems parsing JSON", "documentation_url": DOCS, "status": "400"}
        if body.get("state") not in STATES:
            problems.append({"resource": "Status", "code": "custom", "field": "state",
                             "message": "state is not included in the list"})
        if len(str(body.get("description") or "")) > 140:
            problems.append({"resource": "Status", "code": "custom", "field": "description",
                             "message": "description is too long (maximum is 140 characters)"})
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            return 422, {}, {"message": f"No commit found for SHA: {sha}", "documentation_url": DOCS,
                             "status": "422"}
        if problems:
            return 422, {}, {"message": "Validation Failed", "errors": problems, "documentation_url": DOCS,
                             "status": "422"}
        with self._lock:
            number, self._next_id = self._next_id, self._next_id + 1
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return 201, {"location": f"{self.url}/repos/{self.repo}/statuses/{sha}"}, {
            "url": f"{self.url}/repos/{self.repo}/statuses/{sha}", "id": number, "node_id": f"SC_{number}",
            "state": body["state"], "description": body.get("description"), "target_url": body.get("target_url"),
            "context": body.get("context") or "default", "created_at": now, "updated_at": now,
            "creator": {"login": "pi-cicd", "id": 1, "type": "User"},
        }
