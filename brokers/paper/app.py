"""The paper broker as an ASGI app, and how uvicorn must serve it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute

from brokers.paper.connections import ConnectionTrackingH11Protocol
from brokers.paper.control_api import ControlApi, control_json
from brokers.paper.errors import GeneralError
from brokers.paper.kite_api import KiteApi, kite_failure
from brokers.paper.login import LoginPage
from brokers.paper.simulator import PaperBrokerConfig, Simulator

CONTROL_PREFIX = "/_sim/"
# Long enough that an idle kept-alive connection is never closed just as a client reuses it.
KEEP_ALIVE_SECONDS = 300


def create_app(config: PaperBrokerConfig) -> Starlette:
    """The app; `app.state.simulator` is its state. Reads the state file now, if there is one."""
    simulator = Simulator(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await simulator.start()
        try:
            yield
        finally:
            await simulator.stop()

    app = Starlette(
        routes=[*KiteApi(simulator).routes(), *ControlApi(simulator).routes(),
                *LoginPage(simulator.exchange).routes(),
                # KiteTicker connects to `{root}?api_key=...&access_token=...`: the root is the ticker.
                WebSocketRoute("/", simulator.ticker.serve), WebSocketRoute("/ws", simulator.ticker.serve)],
        lifespan=lifespan,
        exception_handlers={404: _route_error, 405: _route_error},
    )
    app.state.simulator = simulator
    return app


async def _route_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    what = "Route not found" if status == 404 else f"Method {request.method} not allowed"
    if request.url.path.startswith(CONTROL_PREFIX):
        return control_json({"error": f"{what}: {request.url.path}; see docs/paper-broker.md"}, status)
    return kite_failure(GeneralError(f"{what}: {request.url.path}", http_status=status))


def serve_config(app: Starlette, host: str, port: int, *, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn settings the paper broker needs: its own HTTP protocol (dropped connections), WebSockets."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=ConnectionTrackingH11Protocol,
        ws="websockets-sansio",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=2,
    )
