"""The daily Kite login over HTTP.

`POST /accounts/{id}/login` (the account's owner) answers the URL to open. Kite sends the browser back to
the redirect URL registered for the app, `GET /kite/login/{id}/redirect?request_token=…&nonce=…`, which
exchanges the request token and answers a small page. The redirect carries no API key (it comes from the
trader's browser): it is accepted only with the one-time nonce of a login started within ten minutes,
and a Kite user other than the account's own is refused (docs/deployment.md, "The Kite login")."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from apps.api.deps import ServicesDep, UserDep, owned_account
from apps.api.errors import ERROR_RESPONSES
from engine.market_hours import IST
from starter.deps import MAX_ID
from starter.logins import AccountLogins, LoginFailed
from store.errors import InvalidInput, NotFound

router = APIRouter(tags=["accounts"])

AccountIdPath = Annotated[int, Path(gt=0, le=MAX_ID)]
TokenQuery = Annotated[str, Query(max_length=128)]


class LoginStarted(BaseModel):
    account_id: int
    login_url: str


class BrokerAccountOut(BaseModel):
    id: int
    user_id: int
    broker: str
    logged_in: bool
    broker_user_id: str | None
    since: datetime | None
    until: datetime | None
    logged_out_reason: str | None


@router.get("/accounts", response_model=list[BrokerAccountOut], responses=ERROR_RESPONSES,
            summary="Your broker accounts (all of them for administrators): logged in or not, since, until")
async def list_accounts(services: ServicesDep, user: UserDep) -> list[BrokerAccountOut]:
    now = datetime.now(UTC)
    accounts = await services.store.list_broker_accounts(None if user.is_admin else user.id)
    return [
        BrokerAccountOut(
            id=a.id, user_id=a.user_id, broker=a.broker, logged_in=a.logged_in_at(now),
            broker_user_id=a.broker_user_id, since=a.token_issued_at, until=a.token_expires_at,
            logged_out_reason=None if a.logged_in_at(now) else a.logged_out_reason,
        )
        for a in accounts
    ]


@router.post("/accounts/{account_id}/login", response_model=LoginStarted, responses=ERROR_RESPONSES,
             summary="Start the day's Kite login: the URL to open in a browser, good for ten minutes")
async def start_login(account_id: AccountIdPath, services: ServicesDep, user: UserDep) -> LoginStarted:
    await owned_account(services, user, account_id)
    url = await AccountLogins(services.store, services.settings).login_url(account_id)
    return LoginStarted(account_id=account_id, login_url=url)


HTML_PAGE = {"text/html": {"schema": {"type": "string"}}}


@router.get(
    "/kite/login/{account_id}/redirect", response_class=HTMLResponse,
    summary="Kite's login redirect (register it in the Kite developer console); answers a page",
    responses={
        **ERROR_RESPONSES,
        200: {"description": "the account is logged in", "content": HTML_PAGE},
        400: {"description": "the login was refused; the page says what to do", "content": HTML_PAGE},
        404: {"description": "no such broker account", "content": HTML_PAGE},
    },
)
async def login_redirect(
    account_id: AccountIdPath, services: ServicesDep,
    request_token: TokenQuery = "", nonce: TokenQuery = "", status_: Annotated[str, Query(alias="status")] = "",
    action: str = "",
) -> HTMLResponse:
    if status_ != "success" or not request_token:
        return _page(status.HTTP_400_BAD_REQUEST, "The Kite login did not succeed",
                     f"Kite answered status {status_ or 'nothing'!r}: log in again.")
    try:
        account = await AccountLogins(services.store, services.settings).complete(
            account_id, request_token, nonce=nonce
        )
    except NotFound:
        return _page(status.HTTP_404_NOT_FOUND, "No such account",
                     f"broker account {account_id} does not exist: check the redirect URL in the Kite console.")
    except (InvalidInput, LoginFailed) as refused:
        return _page(status.HTTP_400_BAD_REQUEST, "The Kite login was refused", str(refused))
    until = account.token_expires_at.astimezone(IST).strftime("%Y-%m-%d %H:%M IST") if account.token_expires_at else "-"
    return _page(status.HTTP_200_OK, "Logged in",
                 f"Broker account {account.id} is logged in to Kite as {account.broker_user_id} until {until}. "
                 "You may close this page.")


def _page(code: int, title: str, message: str) -> HTMLResponse:
    body = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>")
    return HTMLResponse(body, status_code=code)
