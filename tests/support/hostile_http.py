"""An HTTP server on loopback that answers every request in a hostile way, counting what it sent.

For clients that must bound what an answer costs them (tests of ci_agent/commit_status.py)::

    with HostileHttpServer.huge_body(400 * 2**20) as server:   # 500 with a 400 MiB body, as fast as read
    with HostileHttpServer.trickle(every=2.0) as server:       # 500 whose body comes one byte at a time

Each connection is recorded as a ``Served``: when it was accepted and closed, how many body bytes the
kernel accepted from the server (an upper bound of what the client can have read: the rest was
never sent), and whether the client closed it before the whole body was sent.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Literal

from tests.support.silent_server import SilentServer

Mode = Literal["huge", "trickle"]
_CHUNK = 64 * 1024


@dataclass
class Served:
    accepted_at: float
    closed_at: float | None = None
    body_bytes_sent: int = 0
    cut_by_client: bool = False

    @property
    def seconds(self) -> float | None:
        return None if self.closed_at is None else self.closed_at - self.accepted_at


class HostileHttpServer(SilentServer):
    """``SilentServer``'s listener, answering each connection instead of holding it."""

    def __init__(self, mode: Mode, *, body_size: int, every: float = 0.0) -> None:
        self.mode = mode
        self.body_size = body_size
        self.every = every
        self.served: list[Served] = []
        self._closing = threading.Event()
        super().__init__()  # starts accepting: everything _hold uses is set above

    @classmethod
    def huge_body(cls, size: int) -> HostileHttpServer:
        """``500`` with ``Content-Length: size``, the body sent as fast as the client takes it."""
        return cls("huge", body_size=size)

    @classmethod
    def trickle(cls, *, every: float, size: int = 100_000) -> HostileHttpServer:
        """``500`` with a ``size``-byte body sent one byte every ``every`` seconds (hours for the whole)."""
        return cls("trickle", body_size=size, every=every)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connections(self) -> list[Served]:
        with self._lock:
            return list(self.served)

    def closed(self) -> list[Served]:
        return [s for s in self.connections() if s.closed_at is not None]

    def _hold(self, connection: socket.socket) -> None:
        served = Served(time.monotonic())
        with self._lock:
            self.served.append(served)
        # A small send buffer, so what the kernel accepted is close to what the client read.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _CHUNK)
        with connection:
            try:
                self._read_request(connection)
                connection.sendall(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % self.body_size
                )
                if self.mode == "huge":
                    self._send_fast(connection, served)
                else:
                    self._send_slowly(connection, served)
            except OSError:
                served.cut_by_client = True
        served.closed_at = time.monotonic()

    @staticmethod
    def _read_request(connection: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(4096)
            if not chunk:
                raise OSError("closed before a request")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = connection.recv(4096)
            if not chunk:
                raise OSError("closed during the request body")
            body += chunk

    def _send_fast(self, connection: socket.socket, served: Served) -> None:
        block = b'{"message": "' + b"x" * (_CHUNK - 13)
        while served.body_bytes_sent < self.body_size and not self._closing.is_set():
            part = block[: self.body_size - served.body_bytes_sent]
            connection.sendall(part)
            served.body_bytes_sent += len(part)

    def _send_slowly(self, connection: socket.socket, served: Served) -> None:
        while served.body_bytes_sent < self.body_size:
            connection.sendall(b"x")
            served.body_bytes_sent += 1
            # Also notices the client leaving: its FIN makes the socket readable with nothing to read.
            connection.settimeout(self.every)
            try:
                if connection.recv(1, socket.MSG_PEEK) == b"":
                    raise OSError("closed by the client")
            except TimeoutError:
                pass
            if self._closing.is_set():
                return

    def close(self) -> None:
        self._closing.set()
        super().close()

    def __enter__(self) -> HostileHttpServer:
        return self
