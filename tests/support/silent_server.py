"""A TCP server that accepts connections and never answers: a remote that hangs, for bounded-wait tests.

``with SilentServer() as server:`` records how many connections it accepted and how many the client closed.
"""

from __future__ import annotations

import socket
import threading


class SilentServer:
    """Accepts TCP connections and never answers; records when each one is closed by the client."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.closed_by_client = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self._hold, args=(connection,), daemon=True).start()

    def _hold(self, connection: socket.socket) -> None:
        with connection:
            try:
                while connection.recv(4096):
                    pass
            except OSError:
                pass
        with self._lock:
            self.closed_by_client += 1

    def close(self) -> None:
        self.listener.close()


    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
