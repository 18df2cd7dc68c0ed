"""An httpx transport that sets TLS up on the first ``https://`` request instead of at start.

httpx's default transport builds its SSL context when the client is made, loading certifi's ~150 CA
certificates into OpenSSL: ~0.7 MiB resident for the life of the process. The idle watcher polling a
plain-HTTP registry on loopback (``CD_IMAGE=localhost:5000/...``) never opens a TLS connection, so it
need not pay that. Certificate verification is exactly httpx's default once TLS is used: the ``https``
transport is ``httpx.HTTPTransport()`` itself.
"""

from __future__ import annotations

import threading

import httpcore
import httpx


class TlsOnDemand(httpx.BaseTransport):
    """``http://`` through a transport without CA certificates (plain HTTP never uses them); ``https://``
    through ``httpx.HTTPTransport()``, made on its first request."""

    def __init__(self) -> None:
        self._plain = _PlainHttp()
        self._tls: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            return self._plain.handle_request(request)
        with self._lock:
            if self._tls is None:
                self._tls = httpx.HTTPTransport()
            tls = self._tls
        return tls.handle_request(request)

    def close(self) -> None:
        self._plain.close()
        if self._tls is not None:
            self._tls.close()


class _PlainHttp(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` (same limits, same request and error mapping) over a connection pool that has no
    SSL context: even an unverified one costs ~0.4 MiB. Should an ``https://`` request reach
    it after all, httpcore makes its default, verifying context for it."""

    def __init__(self) -> None:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)  # httpx's
        self._pool = httpcore.ConnectionPool(
            ssl_context=None,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )
