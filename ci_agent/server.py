"""The CI agent's listeners: one uvicorn server per app, all in one event loop, each guarded against strangers.

``ci-agent serve`` has two listeners: the public one GitHub reaches (``CI_HOST:CI_PORT``, the
webhook) and the private one (``CI_DASHBOARD_HOST:CI_DASHBOARD_PORT``, the dashboard). Anyone on the
internet can open connections to the first, so every listener holds these lines:

- **File descriptors.** The soft ``RLIMIT_NOFILE`` (1024 for a service by default) is raised to the
  hard limit at start. Each listener keeps at most :func:`connection_cap` connections, computed from
  that limit with :data:`FD_RESERVE` left for the worker (git, docker, logs, SQLite), so ``accept()``
  never runs out of descriptors. At the cap, a new connection evicts the oldest one that has not sent
  a complete request head; if every connection is inside a request, the new one is closed.
- **Slow or idle clients.** A connection must complete each request head within
  :data:`HEADER_TIMEOUT_SECONDS` of opening or of its previous answer, else it is closed (uvicorn has
  no such timeout; its keep-alive timeout only starts after an answer). Heads are capped at
  :data:`MAX_HEAD_BYTES` by h11.
- **Log storms.** asyncio reports every failed ``accept()`` with a traceback, thousands a second when
  descriptors run out; those reports become one warning a minute. uvicorn's own warnings (one per
  malformed request) are limited to :data:`UVICORN_RECORDS_PER_MINUTE`.

Bodies are bounded by the webhook itself (ci_agent/body.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, ClassVar

import uvicorn
from loguru import logger
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from ci_agent.errors import CiError

HEADER_TIMEOUT_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 5
MAX_CONNECTIONS = 2048
# asyncio accepts up to BACKLOG connections per wake-up before any of them can be closed again, so the
# reserve covers one batch per listener besides the worker's own files.
BACKLOG = 128
FD_RESERVE = 512
MAX_HEAD_BYTES = 16 * 1024
# The soft file limit is raised to the hard one, but no further than this: enough for every listener's cap.
FD_TARGET = 65536
REAP_INTERVAL_SECONDS = 1.0
ACCEPT_ERROR_LOG_INTERVAL = 60.0
_ACCEPT_ERROR = "socket.accept() out of system resource"
UVICORN_RECORDS_PER_MINUTE = 20

_log = logger.bind(agent="ci", component="server")


class ListenerError(CiError):
    """A listener cannot be opened (address in use, no such address, no permission)."""


@dataclass(frozen=True)
class Listener:
    """One address and the app served there; ``name`` appears in messages (``webhook``, ``dashboard``)."""

    name: str
    host: str
    port: int
    app: ASGIApp


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float = HEADER_TIMEOUT_SECONDS


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a connection cap and a deadline for each request head.

    ``self.connections`` is uvicorn's set of this server's open connections; ``self.cycle`` is the
    current request, complete once its answer is sent.
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits(MAX_CONNECTIONS)
    # The server told about each new connection, so it wakes from its idle sleep (set per listener).
    owner: ClassVar[_Server | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # When the connection started waiting for a request head; None while a request is in progress.
        self.waiting_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)
        # After uvicorn's own set-up, which keeps the real transport for reading and flow control.
        self.transport = _Coalescing(transport, self.loop)  # type: ignore[assignment]
        self.waiting_since = self.loop.time()
        if self.owner is not None:
            self.owner.connection_opened()
        if len(self.connections) > self.limits.max_connections and not self._evict_one():
            transport.close()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:
            self.waiting_since = None

    def on_response_complete(self) -> None:
        if isinstance(self.transport, _Coalescing):
            self.transport.flush()  # the whole answer, head and body, in one segment
        super().on_response_complete()
        self.waiting_since = self.loop.time()

    def waiting(self) -> bool:
        """Whether the connection is between requests (or before its first one)."""
        return self.cycle is None or self.cycle.response_complete

    def check_deadline(self, now: float) -> bool:
        """Close the connection if its request head is overdue; True when it was closed."""
        if not self.waiting():
            self.waiting_since = None
            return False
        if self.waiting_since is None:
            self.waiting_since = now  # a pipelined request finished between two checks
            return False
        if now - self.waiting_since <= self.limits.header_timeout or self.transport.is_closing():
            return False
        self.transport.close()
        return True

    def _evict_one(self) -> bool:
        idle = [
            conn
            for conn in self.connections
            if isinstance(conn, GuardedH11Protocol)
            and conn is not self
            and conn.waiting()
            and conn.waiting_since is not None
            and not conn.transport.is_closing()
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda conn: conn.waiting_since or 0.0)
        oldest.transport.close()
        return True


class _Coalescing:
    """A connection's transport that sends what uvicorn writes for one answer in one write.

    uvicorn writes an answer's head and its body separately; with TCP_NODELAY each write is a
    segment of its own, and on a busy machine the client woken by the head can take the CPU before
    the body is sent. Writes are held until the answer is complete (``flush`` from
    ``on_response_complete``) or, for a streamed body, until the end of the event loop's turn.
    Everything else is the real transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """Send each write at once (TCP_NODELAY).

    asyncio sets it only on sockets whose ``proto`` is IPPROTO_TCP, and a socket accepted from
    ``socket.create_server`` has proto 0. Without it an answer's body waited for the client's
    delayed ACK of its head: 40 ms for every request after the first few on a kept-alive connection.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raise_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_TARGET if hard == resource.RLIM_INFINITY else min(hard, FD_TARGET)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return FD_TARGET if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def connection_cap(file_limit: int, listeners: int) -> int:
    """Connections each listener may hold so that ``accept()`` keeps :data:`FD_RESERVE` descriptors spare."""
    share = (file_limit - FD_RESERVE) // max(listeners, 1)
    return max(16, min(MAX_CONNECTIONS, share))


def serve(listeners: list[Listener], on_reload: Callable[[], object] | None = None) -> None:
    """Serve every listener until SIGTERM or SIGINT; a listener that cannot open raises ``ListenerError``.

    ``on_reload`` is called on a thread of its own for each SIGHUP (the listeners keep serving meanwhile).
    """
    file_limit = raise_file_limit()
    limits = ConnectionLimits(connection_cap(file_limit, len(listeners)))
    with _bound(listeners) as sockets:
        _log.info(
            "file limit {} descriptors: at most {} connections per listener, request heads within {:g} s",
            file_limit,
            limits.max_connections,
            limits.header_timeout,
        )
        asyncio.run(_serve_all(listeners, sockets, limits, on_reload))


@contextlib.contextmanager
def _bound(listeners: list[Listener]) -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        for listener in listeners:
            try:
                family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
                sockets.append(socket.create_server((listener.host, listener.port), family=family, backlog=BACKLOG))
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                address = f"{listener.host}:{listener.port}"
                raise ListenerError(f"cannot listen on {address} for the {listener.name}: {reason}") from None
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`_serve_all`, which stops every server together,
    and sleeps while it has no connection.

    uvicorn's own main loop wakes ten times a second (to refresh the ``Date`` header and look for a
    stop), which was most of an idle agent's CPU. Here the loop ticks once a second only while there
    are connections, also closing those whose request head is overdue, and otherwise waits until a
    connection opens or :meth:`wake` is called for a stop.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake = asyncio.Event()
        self._asleep = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def wake(self) -> None:
        self._wake.set()

    def connection_opened(self) -> None:
        """Called by each new connection: after a sleep the ``Date`` header is stale, refresh it first."""
        if self._asleep:
            self._asleep = False
            self._refresh_date()
            self._wake.set()

    async def main_loop(self) -> None:
        should_exit = await self.on_tick(0)
        while not should_exit:
            self._wake.clear()
            connections = self.server_state.connections
            if connections:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), REAP_INTERVAL_SECONDS)
                _reap(connections, asyncio.get_running_loop().time())
            elif not self.should_exit:
                self._asleep = True
                await self._wake.wait()
            # counter 0: refresh the Date header on every tick, as uvicorn does once a second.
            should_exit = await self.on_tick(0)

    def _refresh_date(self) -> None:
        date = [(b"date", formatdate(time.time(), usegmt=True).encode())] if self.config.date_header else []
        self.server_state.default_headers = date + self.config.encoded_headers


async def _serve_all(
    listeners: list[Listener], sockets: list[socket.socket], limits: ConnectionLimits,
    on_reload: Callable[[], object] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    _quiet_accept_errors(loop)
    _limit_uvicorn_records()
    servers = []
    for listener in listeners:
        protocol: type[GuardedH11Protocol] = type(
            f"{listener.name.title()}Protocol", (GuardedH11Protocol,), {"limits": limits}
        )
        config = uvicorn.Config(
            listener.app,
            http=protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=10,
            backlog=BACKLOG,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        )
        server = _Server(config)
        protocol.owner = server
        servers.append(server)

    def stop(sig: signal.Signals) -> None:
        for server in servers:
            if server.should_exit and sig == signal.SIGINT:
                server.force_exit = True
            server.should_exit = True
            server.wake()

    handled = [signal.SIGTERM, signal.SIGINT]
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    if on_reload is not None:
        reload = on_reload

        def reload_soon() -> None:
            # Off the event loop: reading and checking a file may wait for the disk.
            loop.run_in_executor(None, reload)

        loop.add_signal_handler(signal.SIGHUP, reload_soon)
        handled.append(signal.SIGHUP)
    try:
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in zip(servers, sockets, strict=True)))
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _reap(connections: Iterable[object], now: float) -> None:
    """Close connections whose request head is overdue (slow or idle clients)."""
    closed = sum(conn.check_deadline(now) for conn in list(connections) if isinstance(conn, GuardedH11Protocol))
    if closed:
        _log.debug("closed {} connection(s) that sent no complete request head in time", closed)


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    last_logged = -ACCEPT_ERROR_LOG_INTERVAL
    suppressed = 0

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal last_logged, suppressed
        if context.get("message") != _ACCEPT_ERROR:
            loop.default_exception_handler(context)
            return
        suppressed += 1
        now = time.monotonic()
        if now - last_logged >= ACCEPT_ERROR_LOG_INTERVAL:
            _log.warning(
                "cannot accept connections: {} ({} times since the last warning); retrying",
                context.get("exception"),
                suppressed,
            )
            last_logged, suppressed = now, 0

    loop.set_exception_handler(handle)


class _RecordsPerMinute(logging.Filter):
    """Lets ``limit`` records through per minute; strangers decide how many malformed requests there are."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.window_start = -60.0
        self.passed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.window_start >= 60.0:
            self.window_start, self.passed = now, 0
        self.passed += 1
        return self.passed <= self.limit


def _limit_uvicorn_records() -> None:
    # Filters on the loggers themselves: uvicorn logs through "uvicorn.error" with no handler of ours.
    for name in ("uvicorn", "uvicorn.error"):
        target = logging.getLogger(name)
        if not any(isinstance(existing, _RecordsPerMinute) for existing in target.filters):
            target.addFilter(_RecordsPerMinute(UVICORN_RECORDS_PER_MINUTE))
