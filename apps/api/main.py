"""The HTTP API: orders, stop-loss triggers, status, cancel, history, emergency stop, interventions and
strategies, each user on his own strategies and orders only.

    uvicorn apps.api.main:app

Authentication: `Authorization: Bearer <API key>` (keys are issued by `engine users create` and stored
hashed). Another user's strategy or order answers 404, exactly like one that does not exist. Errors
are `{"detail": "what to do"}` with 400 (bad value), 401 (no or unknown key), 403, 404, 409 (duplicate
or state conflict), 422 (malformed request), 502 (the broker refused or failed), 503 (Temporal or the
database unreachable). Money goes in and out as decimal strings. OpenAPI docs at /docs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from temporalio.client import Client

from apps.api.errors import install_error_handlers
from apps.api.guards import DOCS_ASSETS, RequestGuard
from apps.api.routers import accounts, control, events, health, kite, orders, strategies, views
from engine.settings import Settings
from starter.deps import Services
from store import Store


def create_app(
    settings: Settings | None = None,
    client: Client | None = None,
    store: Store | None = None,
    *,
    temporal_address: str | None = None,
) -> FastAPI:
    """The API. With settings, client and store all given it is ready at once (tests); otherwise its
    lifespan builds what is missing from the environment (Settings(), DATABASE_URL, TEMPORAL_*)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = None
        if getattr(app.state, "services", None) is None:
            opened = await Services.open(settings, client=client, store=store, temporal_address=temporal_address)
            app.state.services = opened
        try:
            yield
        finally:
            if opened is not None:
                app.state.services = None
                await opened.close()

    # Swagger UI and ReDoc from assets shipped in the wheel: the docs work with no route to a CDN.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        title="Execution engine API",
        version="1.0",
        summary="Orders, strategies and controls of the order execution engine (NSE/BSE through Kite).",
        description=__doc__,
        lifespan=lifespan,
    )
    if settings is not None and client is not None and store is not None:
        app.state.services = Services.assemble(settings, client, store)
    install_error_handlers(app)
    app.add_middleware(RequestGuard)
    for router in (orders.router, control.router, strategies.router, accounts.router, kite.router, health.router,
                   views.router, events.router):
        app.include_router(router)
    return app


app = create_app()
