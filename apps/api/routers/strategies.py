"""Strategies: create, list, show, change, start and stop; schedules follow."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, status
from fastapi.responses import JSONResponse

from apps.api.deps import ServicesDep, UserDep, owned_account, owned_strategy, requested_by
from apps.api.errors import ERROR_RESPONSES, ORDER_RESPONSES, ApiError
from apps.api.routers.orders import answer_after_waiting
from apps.api.schemas import ExitIn, OrderAcceptedOut, StopIn, StrategyIdPath, StrategyIn, StrategyOut, StrategyPatch
from starter.deps import TemporalUnavailable, temporal_call
from starter.orders import NothingToExit
from store.records import StrategySpec

router = APIRouter(tags=["strategies"])


@router.post(
    "/strategies",
    status_code=status.HTTP_201_CREATED,
    response_model=StrategyOut,
    responses=ERROR_RESPONSES,
    summary="Create a strategy (STOPPED until started)",
)
async def create_strategy(body: StrategyIn, services: ServicesDep, user: UserDep) -> StrategyOut:
    await owned_account(services, user, body.broker_account_id)
    record = await services.store.create_strategy(StrategySpec(user_id=user.id, **body.model_dump()))
    return StrategyOut.of(record)


@router.get("/strategies", response_model=list[StrategyOut], responses=ERROR_RESPONSES)
async def list_strategies(
    services: ServicesDep,
    user: UserDep,
    status_: Annotated[Literal["STOPPED", "RUNNING", "SL_TRIGGERED"] | None, Query(alias="status")] = None,
) -> list[StrategyOut]:
    return [StrategyOut.of(record) for record in await services.store.list_strategies(user.id, status_)]


@router.get("/strategies/{strategy_id}", response_model=StrategyOut, responses=ERROR_RESPONSES)
async def get_strategy(strategy_id: StrategyIdPath, services: ServicesDep, user: UserDep) -> StrategyOut:
    record = await owned_strategy(services, user, strategy_id)
    try:
        schedules = await temporal_call("read the schedules", services.schedules.describe(record.id))
    except TemporalUnavailable:
        return StrategyOut.of(record)
    return StrategyOut.of(record, schedules)


@router.patch(
    "/strategies/{strategy_id}",
    response_model=StrategyOut,
    responses=ERROR_RESPONSES,
    summary="Change settings; schedules follow new entry and exit times",
)
async def update_strategy(
    strategy_id: StrategyIdPath, body: StrategyPatch, services: ServicesDep, user: UserDep
) -> StrategyOut:
    await owned_strategy(services, user, strategy_id)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("broker_account_id") is not None:
        await owned_account(services, user, changes["broker_account_id"])
    record = await services.update_strategy(strategy_id, **changes)  # undone if the schedules cannot follow
    return StrategyOut.of(record)


@router.post(
    "/strategies/{strategy_id}/start",
    response_model=StrategyOut,
    responses=ERROR_RESPONSES,
    summary="RUNNING: orders pass validation, schedules fire",
)
async def start_strategy(strategy_id: StrategyIdPath, services: ServicesDep, user: UserDep) -> StrategyOut:
    await owned_strategy(services, user, strategy_id)
    record = await services.start_strategy(strategy_id, f"started by {requested_by(user)}")
    return StrategyOut.of(record, await services.schedules.describe(record.id))


@router.post(
    "/strategies/{strategy_id}/stop",
    response_model=StrategyOut,
    responses=ERROR_RESPONSES,
    summary="STOPPED: no new order passes validation, schedules paused",
)
async def stop_strategy(
    strategy_id: StrategyIdPath,
    services: ServicesDep,
    user: UserDep,
    body: Annotated[StopIn | None, Body()] = None,
) -> StrategyOut:
    await owned_strategy(services, user, strategy_id)
    reason = f"{(body or StopIn()).reason} ({requested_by(user)})"
    record = await services.stop_strategy(strategy_id, reason)
    return StrategyOut.of(record, await services.schedules.describe(record.id))


@router.post(
    "/strategies/{strategy_id}/exit",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=OrderAcceptedOut,
    responses={**ORDER_RESPONSES, 200: {"model": OrderAcceptedOut, "description": "waited: the order ended"}},
    summary="Sell whatever the strategy still holds, at market, whatever its state (exit reason MANUAL)",
    description="The way out after a partial exit, a failed stop-loss or an emergency stop without "
    "square-off. 409 when the strategy holds nothing or another exit of the position is in flight.",
)
async def exit_strategy_position(
    strategy_id: StrategyIdPath,
    services: ServicesDep,
    user: UserDep,
    body: Annotated[ExitIn | None, Body()] = None,
) -> JSONResponse:
    strategy = await owned_strategy(services, user, strategy_id)
    request = body or ExitIn()
    try:
        handle = await temporal_call(
            "start the exit",
            services.starter.exit_position(strategy, requested_by=requested_by(user), reason=request.reason),
            timeout=None,
        )
    except NothingToExit as nothing:
        raise ApiError(status.HTTP_409_CONFLICT, str(nothing)) from None
    return await answer_after_waiting(services, handle.id, request.wait_seconds)
