"""``cd-agent watch`` through registry trouble: an outage, and a registry answering 429 + Retry-After."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_watch import current_version
from tests.support.cd_apps import AppReleases, CdWorld, WatchProcess
from tests.support.docker_env import DockerJanitor
from tests.support.polling import SHUTDOWN_POLL, wait_for
from tests.support.registry_server import RegistryServer, start_registry

pytestmark = pytest.mark.docker

# Hop-by-hop and length headers are the proxy's own business.
_SKIP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class RateLimitingProxy:
    """A registry front on 127.0.0.1: the first ``refuse`` requests get 429 + ``Retry-After``, the rest
    are passed to ``backend``. ``requests`` records (monotonic time, method, path, status)."""

    def __init__(self, backend: str, *, refuse: int, retry_after: int) -> None:
        self.backend = backend
        self.refuse = refuse
        self.retry_after = retry_after
        self.requests: list[tuple[float, str, str, int]] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=backend, timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.handle(self)

            def do_HEAD(self) -> None:
                proxy.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs=SHUTDOWN_POLL, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            refused = len(self.requests) < self.refuse
            self.requests.append((time.monotonic(), request.command, request.path, 429 if refused else 0))
            index = len(self.requests) - 1
        if refused:
            body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
            request.send_response(429)
            request.send_header("Retry-After", str(self.retry_after))
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            if request.command != "HEAD":
                request.wfile.write(body)
            return
        headers = {key: value for key, value in request.headers.items() if key.lower() != "host"}
        answer = self._http.request(request.command, request.path, headers=headers)
        with self._lock:
            moment, method, path, _ = self.requests[index]
            self.requests[index] = (moment, method, path, answer.status_code)
        request.send_response(answer.status_code)
        for key, value in answer.headers.multi_items():
            if key.lower() not in _SKIP_HEADERS:
                request.send_header(key, value)
        length = answer.headers.get("content-length") if request.command == "HEAD" else str(len(answer.content))
        request.send_header("Content-Length", length or "0")
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(answer.content)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._http.close()


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path / "registry")
    yield server
    server.stop()


@pytest.fixture
def outage_world(docker_client: Any, docker_janitor: DockerJanitor, own_registry: RegistryServer, tmp_path: Path):
    world = CdWorld(docker_client, docker_janitor, AppReleases(docker_client, own_registry, docker_janitor), tmp_path)
    yield world
    world.close()


def test_the_watcher_survives_a_registry_outage_and_deploys_once_it_is_back(
    outage_world: CdWorld, own_registry: RegistryServer, watches: list[WatchProcess]
):
    world = outage_world
    world.releases.push("1.0.0")
    watch = WatchProcess(world.environ(CD_POLL_INTERVAL="0.5", LOG_LEVEL="DEBUG"), world.root)
    watches.append(watch)
    wait_for(lambda: current_version(world) == "1.0.0", timeout=90, what="1.0.0 deployed")

    own_registry.stop()
    wait_for(lambda: watch.lines("backing off"), timeout=30, what="the watcher backing off")
    # several failed attempts, each one further apart, but one warning for the whole streak
    wait_for(lambda: watch.lines("registry unreachable (attempt 3)"), timeout=60, what="a third failed attempt")
    assert watch.process.poll() is None
    assert len(watch.lines("registry unreachable: ")) == 1
    assert world.served() == "1.0.0"  # the app is never touched

    own_registry.start()
    world.releases.push("1.0.1")

    wait_for(lambda: world.served() == "1.0.1", timeout=90, what="1.0.1 deployed after the outage")
    wait_for(lambda: watch.lines("registry reachable again"), timeout=60, what="the recovery logged")
    assert len(watch.lines("registry reachable again")) == 1
    assert len(watch.lines("registry unreachable: ")) == 1
    assert watch.stop() == 0
    assert "Traceback" not in watch.log()


def test_a_429_with_retry_after_is_honoured(
    cd_world: CdWorld, registry: RegistryServer, watches: list[WatchProcess]
):
    world = cd_world
    world.releases.push("1.0.0")
    proxy = RateLimitingProxy(registry.url, refuse=2, retry_after=3)
    try:
        proxied_image = world.releases.repository.replace(registry.host, proxy.host, 1)
        watch = WatchProcess(world.environ(CD_IMAGE=proxied_image, CD_POLL_INTERVAL="1"), world.root)
        watches.append(watch)

        wait_for(lambda: world.served() == "1.0.0", timeout=90, what="1.0.0 deployed through the proxy")

        first, second, third = proxy.requests[:3]
        assert (first[3], second[3]) == (429, 429)
        assert third[3] == 200
        # each retry waited at least the Retry-After (a little slack for clock granularity)
        assert second[0] - first[0] >= 2.9
        assert third[0] - second[0] >= 2.9
        assert len(watch.lines("registry rate limit: ")) == 1
        assert watch.lines("next try in 3.0s")
        wait_for(lambda: watch.lines("registry reachable again"), timeout=60, what="the recovery logged")
        assert len(watch.lines("registry reachable again")) == 1
        assert watch.stop() == 0
    finally:
        proxy.close()
