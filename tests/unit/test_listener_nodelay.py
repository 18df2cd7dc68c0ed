"""The listeners send each answer at once: TCP_NODELAY on every accepted connection, one write per answer."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from uvicorn.server import ServerState

from ci_agent.server import GuardedH11Protocol, _Coalescing


async def _app(scope: object, receive: object, send: object) -> None:
    del scope, receive, send


def test_an_accepted_connection_sends_without_waiting_for_acks() -> None:
    async def accept_one() -> int:
        # socket.create_server is how ci_agent/server.py binds; its accepted sockets have proto 0,
        # so asyncio leaves Nagle on for them (it only sets TCP_NODELAY when proto is IPPROTO_TCP).
        with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(
            listener.getsockname()
        ):
            accepted, _ = listener.accept()
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            config = uvicorn.Config(_app, http=GuardedH11Protocol, lifespan="off", log_config=None)
            state = ServerState()
            transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
                lambda: GuardedH11Protocol(config=config, server_state=state, app_state={}), accepted
            )
            try:
                return accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            finally:
                transport.close()

    assert asyncio.run(accept_one()) != 0

class _Transport:
    """Records what reaches the socket."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def test_an_answer_is_sent_in_one_write_and_a_close_sends_what_is_held_first() -> None:
    real = _Transport()

    async def scenario() -> list[list[bytes]]:
        transport = _Coalescing(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        seen = []
        transport.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
        transport.write(b'{"run":1}')
        seen.append(list(real.sent))
        transport.flush()  # the answer is complete
        seen.append(list(real.sent))
        transport.write(b"a chunk of a streamed body")
        await asyncio.sleep(0)  # the end of the loop's turn sends it
        seen.append(list(real.sent))
        transport.write(b"400 and close")
        transport.close()
        assert transport.get_write_buffer_size() == 0  # everything else is the real transport's
        return seen

    held, answered, streamed = asyncio.run(scenario())
    assert held == []
    assert answered == [b'HTTP/1.1 202 Accepted\r\n\r\n{"run":1}']
    assert streamed == [*answered, b"a chunk of a streamed body"]
    assert real.sent == [*streamed, b"400 and close"]
    assert real.closed
