"""The CD listener's rules, in-process (``Listener.answer``) and over a real socket on a free loopback port."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from cd_agent.listener import (
    MAX_HOOK_BODY,
    Answer,
    Listener,
    ListenerConfig,
    ListenerError,
    Request,
)

HOOK = "hook-token-0123456789abcdef"
DASH = "dashboard-token-0123456789"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "registry-hooks" / "docker-hub-push.json"


class RecordedHints:
    def __init__(self, watched: dict[str, str]) -> None:
        self.watched = watched  # repository -> app
        self.hinted: list[dict[str, set[str]]] = []  # each hint: repository -> the tags named

    def hint(self, pushes: Mapping[str, frozenset[str]]) -> list[str]:
        self.hinted.append({repository: set(tags) for repository, tags in pushes.items()})
        return sorted(app for repo, app in self.watched.items() if repo in pushes)


def page(request: Request) -> Answer | None:
    return Answer.text(200, "the status page") if request.path == "/" else None


def listener(hints: RecordedHints | None = None, **config: object) -> Listener:
    values: dict[str, object] = {"host": "127.0.0.1", "port": 0, **config}
    return Listener(ListenerConfig(**values), hints or RecordedHints({}), page)  # type: ignore[arg-type]


def ask(target: Listener, path: str, *, method: str = "GET", body: bytes = b"", peer: str = "127.0.0.1",
        **headers: str) -> Answer:
    request = Request(method, path, "", {"host": "127.0.0.1:8002", **{k.lower(): v for k, v in headers.items()}})
    return target.answer(request, lambda limit: body if len(body) <= limit else None, peer)


@pytest.mark.parametrize(
    ("host", "header", "status"),
    [
        ("127.0.0.1", "127.0.0.1:8002", 200), ("127.0.0.1", "localhost:8002", 200), ("127.0.0.1", "[::1]:8002", 200),
        ("pi.lan", "pi.lan:8002", 200), ("pi.lan", "PI.LAN.", 200),
        ("127.0.0.1", "pi.lan:8002", 421), ("127.0.0.1", "evil.example", 421), ("127.0.0.1", "", 421),
    ],
)
def test_pages_answer_only_to_loopback_names_and_the_own_host(host: str, header: str, status: int) -> None:
    assert ask(listener(host=host), "/", host=header).status == status


def test_without_a_token_pages_answer_loopback_clients_with_no_store() -> None:
    answer = ask(listener(), "/")
    assert (answer.status, answer.body, answer.private) == (200, b"the status page\n", True)
    assert ask(listener(), "/", peer="192.168.1.20").status == 403
    assert ask(listener(), "/", host="rebound.example:8002").status == 421
    assert ask(listener(), "/nothing").status == 404


def test_with_a_token_every_page_needs_it_from_anywhere() -> None:
    target = listener(dashboard_token=SecretStr(DASH))
    assert ask(target, "/").status == 401
    assert ask(target, "/", authorization="Bearer wrong-token-0123456789").status == 401
    assert ask(target, "/", authorization=f"Bearer {DASH}").status == 200
    basic = "Basic " + base64.b64encode(f"me:{DASH}".encode()).decode()
    assert ask(target, "/", peer="192.168.1.20", host="pi.example", authorization=basic).status == 200
    assert DASH.encode() not in ask(target, "/").body


def test_the_hook_route_exists_only_with_its_token() -> None:
    hints = RecordedHints({"owner/app": "app"})
    body = json.dumps({"events": [{"action": "push", "target": {"repository": "owner/app", "tag": "1.0.0"}}]})
    answer = ask(listener(hints), f"/hooks/registry/{HOOK}", method="POST", body=body.encode())
    assert answer.status == 404 and hints.hinted == []
    target = listener(hints, hook_token=SecretStr(HOOK))
    assert ask(target, "/hooks/registry/", method="POST", body=body.encode()).status == 404
    assert ask(target, f"/hooks/registry/{HOOK[:-1]}x", method="POST", body=body.encode()).status == 404
    assert hints.hinted == []
    answer = ask(target, f"/hooks/registry/{HOOK}", method="POST", body=body.encode(), host="hooks.example.org")
    assert (answer.status, json.loads(answer.body)) == (202, {"polling": ["app"]})
    assert hints.hinted == [{"owner/app": {"1.0.0"}}]  # the tag only tells the app's gate whether to look again


def test_the_hook_takes_docker_hubs_payload_and_ignores_unknown_repositories() -> None:
    hints = RecordedHints({"owner/app": "app"})
    target = listener(hints, hook_token=SecretStr(HOOK))
    answer = ask(target, f"/hooks/registry/{HOOK}", method="POST", body=FIXTURE.read_bytes())
    assert (answer.status, json.loads(answer.body)) == (202, {"ignored": "no app watches svendowideit/testhook"})


@pytest.mark.parametrize(
    ("method", "body", "status"),
    [
        ("POST", b"x" * (MAX_HOOK_BODY + 1), 413),
        ("POST", b"not json", 400),
        ("POST", b'{"ref": "refs/heads/main"}', 400),
        ("GET", b"", 405),
    ],
)
def test_bad_hook_requests_are_refused_and_hint_nothing(method: str, body: bytes, status: int) -> None:
    hints = RecordedHints({"owner/app": "app"})
    answer = ask(listener(hints, hook_token=SecretStr(HOOK)), f"/hooks/registry/{HOOK}", method=method, body=body)
    assert answer.status == status and hints.hinted == []


@pytest.fixture
def served() -> Iterator[Listener]:
    target = listener(RecordedHints({"owner/app": "app"}), hook_token=SecretStr(HOOK))
    target.start()
    yield target
    target.stop()


def test_over_a_socket_answers_carry_their_headers(served: Listener) -> None:
    base = f"http://127.0.0.1:{served.port}"
    response = httpx.get(base + "/")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(base + "/healthz").text == "ok\n"
    huge = httpx.post(base + f"/hooks/registry/{HOOK}", content=b"x" * (MAX_HOOK_BODY + 1))
    assert huge.status_code == 413
    chunked = httpx.post(base + f"/hooks/registry/{HOOK}", content=iter([b"{}"]))
    assert chunked.status_code == 413


def test_a_port_in_use_is_an_error_naming_the_settings(served: Listener) -> None:
    other = listener(port=served.port)
    with pytest.raises(ListenerError, match=r"cannot listen on 127.0.0.1:\d+ \(CD_DASHBOARD_HOST/CD_DASHBOARD_PORT\)"):
        other.start()
