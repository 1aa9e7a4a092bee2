"""Kite's daily login, through the official client: the login URL a person opens, the exchange of the
request token the redirect brings back, and the logout.

Kite echoes no state parameter, but it hands `redirect_params` from the login URL back to the redirect:
the engine puts a one-time nonce there (docs/deployment.md, "The Kite login").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote, urlencode

from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_exceptions

from brokers.errors import BrokerError, SessionExpiredError
from engine.market_hours import IST

TOKEN_EXPIRY_HOUR = 6  # Kite's access tokens die at 06:00 IST the day after login


def token_expiry(issued_at: datetime) -> datetime:
    """The first 06:00 IST after `issued_at`."""
    login = issued_at.astimezone(IST)
    expiry = login.replace(hour=TOKEN_EXPIRY_HOUR, minute=0, second=0, microsecond=0)
    return expiry if expiry > login else expiry + timedelta(days=1)


@dataclass(frozen=True)
class KiteSession:
    """A finished login. The repr leaves the token out."""

    access_token: str
    user_id: str
    issued_at: datetime

    def __repr__(self) -> str:
        return f"KiteSession(user_id={self.user_id!r}, issued_at={self.issued_at.isoformat()})"

    @property
    def expires_at(self) -> datetime:
        return token_expiry(self.issued_at)


class KiteLogin:
    def __init__(self, api_key: str, *, root: str | None = None, timeout: float = 7.0):
        self.api_key = api_key
        self.root = root
        self.timeout = timeout

    def _client(self, access_token: str | None = None) -> KiteConnect:
        client = KiteConnect(self.api_key, access_token=access_token, root=self.root, timeout=self.timeout)
        if self.root:  # another host speaking Kite's API (the paper broker) serves its own login page
            client._default_login_uri = f"{self.root.rstrip('/')}/connect/login"
        return client

    def login_url(self, nonce: str) -> str:
        """What a person opens in a browser; the redirect comes back with the nonce."""
        return f"{self._client().login_url()}&redirect_params={quote(urlencode({'nonce': nonce}))}"

    async def exchange(self, request_token: str, api_secret: str) -> KiteSession:
        """The request token for the day's access token (`generate_session`)."""
        client = self._client()
        try:
            session = await asyncio.to_thread(client.generate_session, request_token, api_secret=api_secret)
        except kite_exceptions.TokenException as refused:
            raise SessionExpiredError(
                f"Kite refused the login: {refused} (a request token works once, for a few minutes; "
                "check the account's api_secret)"
            ) from None
        except kite_exceptions.KiteException as failed:
            raise BrokerError(f"Kite login failed: {failed}") from None
        issued = session.get("login_time")
        issued_at = issued.replace(tzinfo=IST) if isinstance(issued, datetime) and issued.tzinfo is None else issued
        return KiteSession(
            access_token=str(session["access_token"]),
            user_id=str(session["user_id"]),
            issued_at=issued_at if isinstance(issued_at, datetime) else datetime.now(IST),
        )

    async def invalidate(self, access_token: str) -> None:
        """End the session at Kite; one that ended already is no failure."""
        client = self._client(access_token)
        try:
            await asyncio.to_thread(client.invalidate_access_token, access_token)
        except kite_exceptions.TokenException:
            pass
