"""Orders: manual BUY/SELL, stop-loss triggers, status, cancel, the audit history."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, status
from fastapi.responses import JSONResponse
from temporalio.client import WorkflowFailureError

from apps.api.deps import ServicesDep, UserDep, owned_order, owned_strategy, requested_by
from apps.api.errors import ERROR_RESPONSES, ORDER_RESPONSES, ApiError
from apps.api.schemas import (
    CancelIn,
    CancelOut,
    HistoryCursor,
    HistoryItemOut,
    HistoryMoment,
    HistoryPageOut,
    ManualOrderIn,
    OrderAcceptedOut,
    OrderStatusOut,
    StopLossIn,
    WorkflowIdPath,
)
from engine.ids import OrderType
from engine.models import Outcome
from starter.deps import MAX_ID, Services, TemporalUnavailable, temporal_call
from store.records import HistoryQuery

router = APIRouter(tags=["orders"])


def _accepted(workflow_id: str) -> OrderAcceptedOut:
    return OrderAcceptedOut(
        workflow_id=workflow_id,
        status_url=f"/execution/order/{workflow_id}/status",
        cancel_url=f"/execution/order/{workflow_id}/cancel",
    )


async def answer_after_waiting(services: Services, workflow_id: str, wait_seconds: float) -> JSONResponse:
    """202 while in flight; 200 once filled or cancelled; 409 refused by validation; 502 the broker."""
    accepted = _accepted(workflow_id)
    if wait_seconds > 0:
        try:
            await temporal_call(
                "wait for the order",
                services.order_handle(workflow_id).result(),
                timeout=timedelta(seconds=wait_seconds),
            )
        except WorkflowFailureError:
            pass  # the order's outcome is in its status, read next
        except TemporalUnavailable:
            pass  # waited long enough: answer with what there is
        report = await services.order_status(workflow_id)
        accepted.status = OrderStatusOut.of(report)
        if report.outcome == Outcome.INVALID.value:
            raise ApiError(status.HTTP_409_CONFLICT, report.message or "the order was refused", workflow_id=workflow_id)
        if report.outcome in (Outcome.REJECTED.value, Outcome.FAILED.value, Outcome.UNRESOLVED.value):
            raise ApiError(
                status.HTTP_502_BAD_GATEWAY,
                f"the broker did not fill the order ({report.outcome}): {report.message or 'no reason given'}; "
                "check the account at the broker before trying again",
                workflow_id=workflow_id,
                status=report.outcome,
            )
        if report.finished:
            return JSONResponse(status_code=status.HTTP_200_OK, content=accepted.model_dump(mode="json"))
    return JSONResponse(status_code=status.HTTP_202_ACCEPTED, content=accepted.model_dump(mode="json"))


@router.post(
    "/execution/order",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=OrderAcceptedOut,
    responses={**ORDER_RESPONSES, 200: {"model": OrderAcceptedOut, "description": "waited: the order ended"}},
    summary="Place a manual BUY or SELL for a strategy",
)
async def place_order(body: ManualOrderIn, services: ServicesDep, user: UserDep) -> JSONResponse:
    strategy = await owned_strategy(services, user, body.strategy_id)
    handle = await services.place_order(
        strategy, OrderType(body.order_type), requested_by=requested_by(user), reason=body.reason,
        how_to_start=f"POST /strategies/{strategy.id}/start",
    )
    return await answer_after_waiting(services, handle.id, body.wait_seconds)


@router.post(
    "/execution/stop-loss",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=OrderAcceptedOut,
    responses={**ORDER_RESPONSES, 200: {"model": OrderAcceptedOut, "description": "waited: the order ended"}},
    summary="Trigger a strategy's stop-loss (SL_SELL at market)",
)
async def trigger_stop_loss(body: StopLossIn, services: ServicesDep, user: UserDep) -> JSONResponse:
    strategy = await owned_strategy(services, user, body.strategy_id)
    handle = await services.place_order(
        strategy, OrderType.SL_SELL, trigger_price=body.trigger_price, requested_by=requested_by(user),
        reason=body.reason, how_to_start=f"POST /strategies/{strategy.id}/start",
    )
    return await answer_after_waiting(services, handle.id, body.wait_seconds)


@router.get(
    "/execution/order/{workflow_id}/status",
    response_model=OrderStatusOut,
    responses=ERROR_RESPONSES,
    summary="An order's state now (never waits for it to finish)",
)
async def order_status(workflow_id: WorkflowIdPath, services: ServicesDep, user: UserDep) -> OrderStatusOut:
    await owned_order(services, user, workflow_id)
    return OrderStatusOut.of(await services.order_status(workflow_id))


@router.post(
    "/execution/order/{workflow_id}/cancel",
    response_model=CancelOut,
    responses={**ERROR_RESPONSES, 202: {"model": CancelOut, "description": "asked; no answer yet"}},
    summary="Cancel an order in flight (409 with what it ended as if it already finished)",
    description="200 cancelled; 202 asked, the broker has not answered yet (the cancel holds); 409 the order "
    "had already ended, or the broker refused the cancel because a fill raced it.",
)
async def cancel_order(
    workflow_id: WorkflowIdPath,
    services: ServicesDep,
    user: UserDep,
    body: Annotated[CancelIn | None, Body()] = None,
) -> JSONResponse:
    await owned_order(services, user, workflow_id)
    request = body or CancelIn()
    reason = f"{request.reason} ({requested_by(user)})"
    outcome = await services.cancel_order(workflow_id, reason, wait_seconds=request.wait_seconds)
    if outcome.accepted is False:
        raise ApiError(
            status.HTTP_409_CONFLICT,
            f"the broker refused the cancel ({outcome.message}); a fill that raced it is kept: follow the status",
            workflow_id=workflow_id,
        )
    answer = CancelOut(workflow_id=outcome.workflow_id, accepted=outcome.accepted, message=outcome.message)
    code = status.HTTP_202_ACCEPTED if outcome.accepted is None else status.HTTP_200_OK
    return JSONResponse(status_code=code, content=answer.model_dump(mode="json"))


@router.get(
    "/execution/history",
    response_model=HistoryPageOut,
    responses=ERROR_RESPONSES,
    summary="The audit log of your orders, newest first",
)
async def history(
    services: ServicesDep,
    user: UserDep,
    strategy_id: Annotated[int | None, Query(gt=0, le=MAX_ID)] = None,
    status_: Annotated[Literal["ATTEMPTING", "SUCCESS", "FAILED", "ERROR"] | None, Query(alias="status")] = None,
    order_type: Annotated[Literal["BUY", "SELL", "SL_SELL"] | None, Query()] = None,
    since: Annotated[HistoryMoment, Query(description="inclusive, with a time zone")] = None,
    until: Annotated[HistoryMoment, Query(description="exclusive, with a time zone")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[HistoryCursor, Query(max_length=200, pattern=r"^[A-Za-z0-9_\-=]+$")] = None,
) -> HistoryPageOut:
    page = await services.store.order_history(
        HistoryQuery(
            user_id=user.id, strategy_id=strategy_id, status=status_, order_type=order_type, since=since,
            until=until, limit=limit, cursor=cursor,
        )
    )
    return HistoryPageOut(
        items=[HistoryItemOut.of(item, page.orders.get(item.order_id)) for item in page.items],
        next_cursor=page.next_cursor,
    )
