"""Closing a client's connection with no answer, which ASGI itself cannot express.

The uvicorn protocol below records each connection's transport by the client's address in the
server's shared app state; `DroppedConnection`, returned as a response, finds it and closes it.
The client sees the connection end before any status line: a `ConnectionError`, not an answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

TRANSPORTS_KEY = "paper_broker.transports"


class ConnectionTrackingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, also remembering each connection's transport for `DroppedConnection`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.client is not None:
            _transports(self.app_state)[self.client] = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            _transports(self.app_state).pop(self.client, None)
        super().connection_lost(exc)


def _transports(app_state: dict[str, Any]) -> dict[tuple[str, int], asyncio.Transport]:
    return app_state.setdefault(TRANSPORTS_KEY, {})


class DroppedConnection(Response):
    """A response that closes the connection instead of answering."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transports = scope.get("state", {}).get(TRANSPORTS_KEY)
        if transports is None:
            raise RuntimeError("dropping a connection needs the paper broker's uvicorn protocol "
                               "(brokers.paper.app.serve_config)")
        client = scope.get("client")
        transport = transports.get(tuple(client)) if client else None
        if transport is None:
            return  # the client has already gone
        transport.close()
        # Wait for the server to notice, or it would answer 500 in the app's place.
        while (await receive())["type"] != "http.disconnect":
            pass
