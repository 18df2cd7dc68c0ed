"""The probe the blue-green tests trust: a slow answer is not a dropped request, a dropped one fails.

A real HTTP server on loopback (``http.server``) answers as each test tells it: normally, slowly,
closing the connection without an answer, with a 502, or never.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.polling import SHUTDOWN_POLL
from tests.support.switch_probe import SwitchProbe


@dataclass
class Behaviour:
    mode: str = "ok"
    delay: float = 0.0
    release: threading.Event = field(default_factory=threading.Event)


def handler_for(behaviour: Behaviour) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            mode = behaviour.mode
            if mode == "close":
                self.close_connection = True
                return  # the connection closes with no answer at all
            if mode == "hang":
                behaviour.release.wait(30)
                self.close_connection = True
                return
            if mode == "slow":
                behaviour.release.wait(behaviour.delay)
            status, body = (502, b"bad gateway") if mode == "502" else (200, b"A")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


@pytest.fixture
def served() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_for(behaviour))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs=SHUTDOWN_POLL, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", behaviour
    behaviour.release.set()
    server.shutdown()
    server.server_close()


def test_a_slow_answer_is_not_a_failure_but_is_listed(served: tuple[str, Behaviour]) -> None:
    url, behaviour = served
    with SwitchProbe(url, expected={"A"}, timeout=5, slow_after=0.3) as probe:
        behaviour.mode, behaviour.delay = "slow", 0.6
        probe.wait_for_more(2)
        behaviour.mode = "ok"
        probe.wait_for_more(2)
    assert probe.failures == []
    assert {sample.client for sample in probe.slow} == {"fresh", "keepalive"}


@pytest.mark.parametrize("mode", ["close", "502"])
def test_a_dropped_or_refused_request_fails(served: tuple[str, Behaviour], mode: str) -> None:
    url, behaviour = served
    with SwitchProbe(url, expected={"A"}, timeout=5) as probe:
        behaviour.mode = mode
        probe.wait_for_more(2)
    assert {sample.client for sample in probe.failures} == {"fresh", "keepalive"}
    assert "failed after" in probe.explain([("switch", probe.failures[0].at)])


def test_a_request_nobody_answers_fails_at_the_timeout(served: tuple[str, Behaviour]) -> None:
    url, behaviour = served
    with SwitchProbe(url, expected={"A"}, timeout=0.5) as probe:
        behaviour.mode = "hang"
        probe.wait_for_more(1)
    timed_out = [sample for sample in probe.failures if "timed out" in sample.detail.lower()]
    assert {sample.client for sample in timed_out} == {"fresh", "keepalive"}
