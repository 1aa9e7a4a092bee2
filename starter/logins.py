"""The daily Kite login of a broker account: the URL a person opens, the redirect's exchange of the
request token, the logout. Used by the CLI (`engine accounts login|logout`) and the HTTP API's redirect
endpoint; docs/deployment.md says how it runs each morning."""

from __future__ import annotations

import logging

from brokers.errors import BrokerError
from brokers.kite_login import KiteLogin
from engine.settings import Settings
from store import Store
from store.errors import CredentialsMissing
from store.records import BrokerAccountRecord

log = logging.getLogger(__name__)


class LoginFailed(ValueError):
    """Kite refused the login, or it could not be reached; the message says what to do."""


class AccountLogins:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings

    def _kite(self, api_key: str) -> KiteLogin:
        return KiteLogin(api_key, root=self.settings.kite_root, timeout=self.settings.broker_http_timeout_seconds)

    async def login_url(self, account_id: int) -> str:
        """A fresh login of the account: the URL to open in a browser, good for ten minutes."""
        app = await self.store.broker_app_credentials(account_id)
        nonce = await self.store.start_login(account_id)
        return self._kite(app.api_key).login_url(nonce)

    async def complete(self, account_id: int, request_token: str, *, nonce: str | None) -> BrokerAccountRecord:
        """Exchange the redirect's request token for the day's access token and store it. A redirect
        must bring back the nonce of a login started here; an operator's `--request-token` (who holds
        the store's credentials anyway) passes `nonce=None` and skips that check."""
        if not request_token or not request_token.isascii() or len(request_token) > 128:
            raise LoginFailed("the redirect carries no usable request_token: log in again")
        if nonce is not None:
            await self.store.check_login_nonce(account_id, nonce)
        app = await self.store.broker_app_credentials(account_id)
        try:
            session = await self._kite(app.api_key).exchange(request_token, app.api_secret)
        except BrokerError as refused:
            raise LoginFailed(f"{refused}: run `engine accounts login {account_id}` again") from None
        account = await self.store.complete_login(
            account_id, access_token=session.access_token, broker_user_id=session.user_id,
            issued_at=session.issued_at, expires_at=session.expires_at,
        )
        log.info("broker account %s logged in to Kite as %s until %s", account_id, session.user_id,
                 session.expires_at.isoformat())
        return account

    async def logout(self, account_id: int) -> BrokerAccountRecord:
        """End the day's session at Kite and forget the token."""
        try:
            credentials = await self.store.broker_credentials(account_id)
        except CredentialsMissing:
            credentials = None
        if credentials is not None:
            try:
                await self._kite(credentials.api_key).invalidate(credentials.access_token)
            except BrokerError as failed:
                log.warning("Kite could not be told of the logout of account %s: %s", account_id, failed)
        return await self.store.log_out(account_id, "logged out by an operator")
