"""The listeners send each answer at once: TCP_NODELAY on every connection they accept."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from uvicorn.server import ServerState

from ci_agent.server import GuardedH11Protocol


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
