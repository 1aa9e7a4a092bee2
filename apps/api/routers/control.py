"""Control: emergency stop and the strategies waiting for a person."""

from __future__ import annotations

from fastapi import APIRouter, status

from apps.api.deps import ServicesDep, UserDep, owned_strategy, requested_by
from apps.api.errors import ERROR_RESPONSES, ApiError
from apps.api.schemas import EmergencyStopIn, EmergencyStopOut, ErrorOut, InterventionOut, StrategyIdPath, StrategyOut
from starter.control import start_emergency_stop
from starter.deps import temporal_call

router = APIRouter(tags=["control"])


@router.post(
    "/execution/emergency-stop",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EmergencyStopOut,
    responses={**ERROR_RESPONSES, 403: {"model": ErrorOut}},
    summary="Stop all your strategies now, cancel their orders, optionally square off",
)
async def emergency_stop(body: EmergencyStopIn, services: ServicesDep, user: UserDep) -> EmergencyStopOut:
    if body.all_users and not user.is_admin:
        raise ApiError(
            status.HTTP_403_FORBIDDEN,
            "only an administrator may stop every user's strategies; leave all_users out to stop your own",
        )
    workflow_id = await temporal_call(
        "start the emergency stop",
        start_emergency_stop(
            services.client,
            services.settings,
            user_id=None if body.all_users else user.id,
            square_off=body.square_off,
            reason=body.reason,
            requested_by=requested_by(user),
        ),
        timeout=None,
    )
    scope = "every user's" if body.all_users else "your"
    return EmergencyStopOut(
        workflow_id=workflow_id,
        message=f"emergency stop started: {scope} strategies are stopped"
        + (" and open positions squared off" if body.square_off else ""),
    )


@router.get(
    "/execution/interventions",
    response_model=list[InterventionOut],
    responses=ERROR_RESPONSES,
    summary="Your strategies waiting for a person",
)
async def interventions(services: ServicesDep, user: UserDep) -> list[InterventionOut]:
    return [InterventionOut.of(record) for record in await services.store.list_interventions(user.id)]


@router.post(
    "/execution/interventions/{strategy_id}/clear",
    response_model=StrategyOut,
    responses=ERROR_RESPONSES,
    summary="Mark a strategy's manual intervention as done",
)
async def clear_intervention(strategy_id: StrategyIdPath, services: ServicesDep, user: UserDep) -> StrategyOut:
    await owned_strategy(services, user, strategy_id)
    return StrategyOut.of(await services.store.clear_intervention(strategy_id, requested_by(user)))
