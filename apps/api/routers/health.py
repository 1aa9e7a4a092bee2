"""Health: is the database reachable, is Temporal?"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from apps.api.deps import ServicesDep
from apps.api.schemas import HealthOut
from starter.deps import Services, temporal_call
from store.errors import SchemaOutOfDate, StoreUnavailable
from store.migrate import head_revision

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut}},
    summary="Is the database reachable, is Temporal?",
)
async def health(services: ServicesDep) -> JSONResponse:
    database = await _probe(_database_ping(services))
    revision, head = None, head_revision()
    if database == "ok":
        try:
            revision, head = await services.store.schema_revision()
        except StoreUnavailable as down:
            database = f"unreachable: {down}"
        else:
            if revision != head:
                database = str(SchemaOutOfDate(revision, head))
    temporal = await _probe(temporal_call("health check", services.client.service_client.check_health()))
    healthy = database == temporal == "ok"
    answer = HealthOut(
        status="ok" if healthy else "degraded", database=database, temporal=temporal,
        schema_revision=revision, schema_head=head,
    )
    code = status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(status_code=code, content=answer.model_dump())


async def _database_ping(services: Services) -> None:
    async with services.store.engine.connect() as connection:
        await connection.exec_driver_sql("SELECT 1")


async def _probe(check: Awaitable[Any]) -> str:
    try:
        answer = await check
    except Exception as error:  # any failure is the answer here
        return f"unreachable: {type(error).__name__}"
    return "not serving" if answer is False else "ok"
