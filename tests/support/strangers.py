"""Strangers on a listener, over real sockets: idle or half-sent connections, and large unsigned uploads.

Used by tests/reliability/test_listener_abuse.py and bench/listener_abuse.py.
"""

from __future__ import annotations

import resource
import socket
import threading
import uuid

MIB = 1024 * 1024
UPLOAD_BYTES = 25 * MIB


def allow_open_files(count: int) -> None:
    """Raise this process's soft file limit so it can hold ``count`` sockets (a shell's default is 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise RuntimeError(f"this process may open at most {hard} files; {wanted} are needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class IdleCrowd:
    """``count`` connections that never finish a request: half send nothing, half half a request head."""

    def __init__(self, port: int, count: int) -> None:
        allow_open_files(count)
        self.sockets: list[socket.socket] = []
        for index in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if index % 2:
                sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: pi\r\nX-GitHub-Event: push\r\n")
            self.sockets.append(sock)

    def closed_by_agent(self) -> int:
        """How many the agent has closed (a read sees end of file or a reset)."""
        closed = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        return closed

    def leave(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


class Uploaders:
    """``count`` threads each sending 25 MiB bodies without a valid signature, over and over, until stopped.

    Even-numbered ones send no signature header, odd ones a wrong one (the agent has to read that
    body to know). Each records the status line it got, or the error that ended the attempt.
    """

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.started = threading.Barrier(count + 1)
        self.outcomes: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(index,), daemon=True) for index in range(count)]
        for thread in self.threads:
            thread.start()
        self.started.wait(timeout=60)

    def _run(self, index: int) -> None:
        chunk = b"x" * MIB
        first = True
        while not self.stop.is_set():
            head = (
                "POST /webhook HTTP/1.1\r\nHost: pi\r\nContent-Type: application/json\r\n"
                f"X-GitHub-Event: push\r\nX-GitHub-Delivery: {uuid.uuid4()}\r\nContent-Length: {UPLOAD_BYTES}\r\n"
            )
            if index % 2:
                head += "X-Hub-Signature-256: sha256=" + "0" * 64 + "\r\n"
            outcome = "?"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                    sock.sendall(head.encode() + b"\r\n")
                    sock.sendall(chunk)
                    if first:
                        first = False
                        self.started.wait(timeout=60)
                    for _ in range(UPLOAD_BYTES // MIB - 1):
                        sock.sendall(chunk)
                    outcome = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
            except OSError as exc:
                outcome = type(exc).__name__
                if first:
                    first = False
                    self.started.wait(timeout=60)
            with self.lock:
                self.outcomes.append(outcome)

    def finish(self) -> dict[str, int]:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            key = " ".join(outcome.split()[:2]) if outcome.startswith("HTTP/") else outcome
            counts[key] = counts.get(key, 0) + 1
        return counts
