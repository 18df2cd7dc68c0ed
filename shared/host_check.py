"""Private pages answer only to their own names: the guard against DNS rebinding.

A web page on an attacker's domain can make its name resolve to 127.0.0.1 (DNS rebinding); the
browser then sends the page's requests to a listener on this machine, or to one an ``ssh -L`` tunnel
forwards, as same-origin requests, and lets the page read the answers. The one thing such a request
cannot hide is its ``Host`` header: it names the attacker's domain. So a page without a token of its
own answers only requests whose ``Host`` is

- a loopback name: ``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``[::1]`` (with or without a port);
- a name the user configured for it (the address the listener is bound to, the public URL's host).

Anything else is answered ``421 Misdirected Request`` with a short plain-text reason, and one log
line (at most :data:`shared.refusals.REFUSALS_LOGGED_PER_WINDOW` a minute). :func:`allows_host` is
the rule, :class:`HostCheck` the ASGI middleware that applies it to every request of an app.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from shared.refusals import RefusalCounter
from shared.settings import is_loopback_host

if TYPE_CHECKING:
    import loguru
    from starlette.types import ASGIApp, Receive, Scope, Send

# A host and an optional port: a bracketed IPv6 address, or a name or IPv4 address without colons.
_HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s/@]+)(?::[0-9]{1,5})?")
DEFAULT_REASON = "this page answers only to localhost and the host names it is configured for"


def host_name(header: str) -> str | None:
    """The name a ``Host`` header asks for, lower case, without port, brackets or a final dot; None if malformed."""
    match = _HOST_HEADER.fullmatch(header.strip())
    if match is None:
        return None
    return match.group(1).strip("[]").rstrip(".").lower() or None


def own_names(*hosts_or_urls: str | None) -> frozenset[str]:
    """The names a page answers to besides loopback: each value is a host (``pi.lan``) or a URL."""
    names = set()
    for value in hosts_or_urls:
        if not value:
            continue
        if "://" in value:
            host = urlsplit(value).hostname
        elif value.count(":") > 1 and "[" not in value:
            host = value  # a bare IPv6 address, as CI_DASHBOARD_HOST takes it (fd00::5)
        else:
            host = host_name(value)
        if host:
            names.add(host.strip("[]").rstrip(".").lower())
    return frozenset(names)


def allows_host(header: str | None, names: Iterable[str]) -> bool:
    """Whether a request with ``Host: header`` may be answered: a loopback name or one of ``names``."""
    if header is None:
        return False
    name = host_name(header)
    return name is not None and (is_loopback_host(name) or name in names)


class HostCheck:
    """ASGI middleware: every HTTP request whose ``Host`` :func:`allows_host` refuses is answered 421."""

    def __init__(
        self, app: ASGIApp, *, names: frozenset[str], log: loguru.Logger, reason: str = DEFAULT_REASON
    ) -> None:
        self.app = app
        self.names = names
        self.log = log
        self.body = f"421 Misdirected Request: {reason}\n".encode()
        self.refusals = RefusalCounter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [value for key, value in scope["headers"] if key == b"host"]
        header = headers[0].decode("latin-1") if len(headers) == 1 else None
        if allows_host(header, self.names):
            await self.app(scope, receive, send)
            return
        left_out = self.refusals.count()
        if left_out is not None:
            if left_out:
                self.log.warning("{} more requests for other host names in the last minute were not logged",
                                 left_out)
            self.log.warning("{} {} for host {!r} answered 421: not a name of this page (DNS rebinding?)",
                             scope.get("method", "?"), scope.get("path", "?"), (header or "")[:100])
        await send({
            "type": "http.response.start",
            "status": 421,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(self.body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ],
        })
        await send({"type": "http.response.body", "body": self.body})
