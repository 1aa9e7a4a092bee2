"""Broker accounts: reconcile one with the broker's books now, and read its reconcile reports. For the
account's owner and administrators; anyone else gets 404, as for an account that does not exist."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from apps.api.deps import ServicesDep, UserDep, owned_account, requested_by
from apps.api.errors import ERROR_RESPONSES, ApiError
from engine.reconcile import ReconcileReport
from starter.deps import MAX_ID, Services
from starter.reconcile import ReconcileFailed, reconcile_account
from store.records import UserRecord

router = APIRouter(tags=["accounts"])

AccountIdPath = Annotated[int, Path(gt=0, le=MAX_ID)]


async def reconcile_allowed(services: Services, user: UserRecord, account_id: int) -> None:
    if not user.is_admin:
        await owned_account(services, user, account_id)
    else:
        await services.store.get_broker_account(account_id)


@router.post(
    "/accounts/{account_id}/reconcile",
    response_model=ReconcileReport,
    responses={**ERROR_RESPONSES, 502: {"model": ERROR_RESPONSES[400]["model"]}},
    summary="Compare the broker's books with the store and repair what is explained (docs/control.md)",
)
async def reconcile(
    account_id: AccountIdPath, services: ServicesDep, user: UserDep, dry_run: bool = False
) -> ReconcileReport:
    await reconcile_allowed(services, user, account_id)
    try:
        return await reconcile_account(
            services.client, services.settings, account_id, dry_run=dry_run, requested_by=requested_by(user)
        )
    except ReconcileFailed as failed:
        raise ApiError(status.HTTP_502_BAD_GATEWAY, str(failed)) from None


@router.get(
    "/accounts/{account_id}/reconcile-reports",
    response_model=list[ReconcileReport],
    responses=ERROR_RESPONSES,
    summary="The account's latest reconcile reports, newest first",
)
async def reconcile_reports(
    account_id: AccountIdPath, services: ServicesDep, user: UserDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[ReconcileReport]:
    await reconcile_allowed(services, user, account_id)
    rows = await services.store.reconcile_reports(account_id, limit)
    return [ReconcileReport.model_validate(row) for row in rows]
