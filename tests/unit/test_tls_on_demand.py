"""The watcher's registry transport: plain HTTP without any SSL context, TLS (verified) made on first use."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from cd_agent.tls_on_demand import TlsOnDemand
from tests.support.polling import SHUTDOWN_POLL


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=httpd.serve_forever, kwargs=SHUTDOWN_POLL, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_plain_http_is_served_without_making_tls(server: str) -> None:
    transport = TlsOnDemand()
    with httpx.Client(transport=transport) as client:
        assert client.get(server + "/v2/").text == "hello"
        assert client.get(server + "/v2/").text == "hello"  # the pooled connection again
    assert transport._tls is None


def test_the_first_https_request_makes_a_verifying_tls_transport(server: str) -> None:
    transport = TlsOnDemand()
    with httpx.Client(transport=transport) as client:
        # A plain-HTTP server spoken to over TLS: the handshake fails, after the TLS transport was made.
        with pytest.raises(httpx.ConnectError):
            client.get(server.replace("http://", "https://") + "/v2/")
        assert transport._tls is not None
        context = transport._tls._pool._ssl_context
        assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert client.get(server + "/v2/").text == "hello"  # plain HTTP still goes its own way
