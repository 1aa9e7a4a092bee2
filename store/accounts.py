"""Users with hashed API keys, and broker accounts whose secrets are encrypted at rest."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime, timedelta
from secrets import token_hex, token_urlsafe

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from store import validation as check
from store.base import StoreBase, to_record, utc_now
from store.errors import AlreadyExists, InvalidInput
from store.models import BrokerAccount, User
from store.records import BrokerAccountRecord, BrokerAppCredentials, BrokerCredentials, UserRecord

API_KEY_SCHEME = "kee"
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
BROKER_NAME = re.compile(r"[a-z][a-z0-9_]{0,15}")


def _hash_api_key(plain_key: str) -> str:
    return hashlib.sha256(plain_key.encode()).hexdigest()


def _new_api_key() -> tuple[str, str]:
    """(lookup prefix, full key). The prefix finds the row; the rest is checked against the hash."""
    prefix = token_hex(6)
    return prefix, f"{API_KEY_SCHEME}_{prefix}_{token_urlsafe(32)}"


def _account_record(row: BrokerAccount) -> BrokerAccountRecord:
    return BrokerAccountRecord(
        id=row.id,
        user_id=row.user_id,
        broker=row.broker,
        has_access_token=row.access_token_encrypted is not None,
        token_expires_at=row.token_expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        token_issued_at=row.token_issued_at,
        broker_user_id=row.broker_user_id,
        logged_out_at=row.logged_out_at,
        logged_out_reason=row.logged_out_reason,
    )


# A login started by `engine accounts login` (or the API) must come back within this long.
LOGIN_NONCE_LIFETIME = timedelta(minutes=10)


def _hash_nonce(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


class AccountsMixin(StoreBase):
    async def create_user(self, username: str, is_admin: bool = False) -> tuple[UserRecord, str]:
        """A new user and their API key. The key is shown only here: the store keeps its hash."""
        name = check.text(username, "username", max_length=64, pattern=USERNAME)
        if not isinstance(is_admin, bool):
            raise InvalidInput(f"is_admin must be True or False, got {is_admin!r}")
        prefix, plain_key = _new_api_key()
        user = User(
            username=name,
            is_admin=is_admin,
            api_key_prefix=prefix,
            api_key_hash=_hash_api_key(plain_key),
            created_at=utc_now(),
        )
        try:
            async with self._write() as session:
                if await session.scalar(select(User.id).where(User.username == name)) is not None:
                    raise AlreadyExists(f"username {name!r} is taken; choose another")
                session.add(user)
                await session.flush()
                return to_record(UserRecord, user), plain_key
        except IntegrityError as exc:
            raise AlreadyExists(f"username {name!r} is taken; choose another") from exc

    async def get_user(self, user_id: int) -> UserRecord:
        async with self._read() as session:
            return to_record(UserRecord, await self._user_row(session, user_id))

    async def user_by_api_key(self, plain_key: str) -> UserRecord | None:
        """The key's owner, or None for any key this store did not issue."""
        if not isinstance(plain_key, str):
            return None
        parts = plain_key.split("_", 2)
        if len(parts) != 3 or parts[0] != API_KEY_SCHEME:
            return None
        async with self._read() as session:
            user = await session.scalar(select(User).where(User.api_key_prefix == parts[1]))
        if user is None or not hmac.compare_digest(user.api_key_hash, _hash_api_key(plain_key)):
            return None
        return to_record(UserRecord, user)

    async def add_broker_account(
        self,
        user_id: int,
        *,
        broker: str = "kite",
        api_key: str,
        api_secret: str,
        access_token: str | None = None,
        token_expires_at: datetime | None = None,
    ) -> BrokerAccountRecord:
        broker_name = check.text(broker, "broker", max_length=16, pattern=BROKER_NAME)
        plain_api_key = check.secret_text(api_key, "api_key")
        plain_api_secret = check.secret_text(api_secret, "api_secret")
        plain_token = None if access_token is None else check.secret_text(access_token, "access_token")
        expires_at = check.optional_aware_datetime(token_expires_at, "token_expires_at")
        now = utc_now()
        async with self._write() as session:
            await self._user_row(session, user_id)
            account = BrokerAccount(
                user_id=user_id,
                broker=broker_name,
                api_key_encrypted=self._secret_box.encrypt(plain_api_key),
                api_secret_encrypted=self._secret_box.encrypt(plain_api_secret),
                access_token_encrypted=None if plain_token is None else self._secret_box.encrypt(plain_token),
                token_expires_at=expires_at,
                created_at=now,
                updated_at=now,
            )
            session.add(account)
            await session.flush()
            return _account_record(account)

    async def get_broker_account(self, account_id: int) -> BrokerAccountRecord:
        async with self._read() as session:
            return _account_record(await self._account_row(session, account_id))

    async def set_access_token(
        self, account_id: int, access_token: str, expires_at: datetime | None
    ) -> BrokerAccountRecord:
        """Store the day's access token after a broker login."""
        plain_token = check.secret_text(access_token, "access_token")
        expiry = check.optional_aware_datetime(expires_at, "expires_at")
        async with self._write() as session:
            account = await self._account_row(session, account_id, lock=True)
            account.access_token_encrypted = self._secret_box.encrypt(plain_token)
            account.token_expires_at = expiry
            account.updated_at = utc_now()
            await session.flush()
            return _account_record(account)

    async def list_broker_accounts(self, user_id: int | None = None) -> list[BrokerAccountRecord]:
        query = select(BrokerAccount).order_by(BrokerAccount.id)
        if user_id is not None:
            query = query.where(BrokerAccount.user_id == user_id)
        async with self._read() as session:
            return [_account_record(row) for row in await session.scalars(query)]

    async def start_login(self, account_id: int) -> str:
        """A one-time nonce for a login through the browser: the redirect must bring it back (Kite
        echoes it from the login URL's `redirect_params`). A new login replaces an unfinished one."""
        nonce = token_urlsafe(24)
        async with self._write() as session:
            account = await self._account_row(session, account_id, lock=True)
            account.login_nonce_hash = _hash_nonce(nonce)
            account.login_nonce_expires_at = utc_now() + LOGIN_NONCE_LIFETIME
            await session.flush()
        return nonce

    async def check_login_nonce(self, account_id: int, nonce: str | None) -> None:
        """InvalidInput unless `nonce` is the account's login in progress, within its lifetime."""
        async with self._read() as session:
            account = await self._account_row(session, account_id)
        expected, until = account.login_nonce_hash, account.login_nonce_expires_at
        if not nonce or expected is None or not hmac.compare_digest(expected, _hash_nonce(nonce)):
            raise InvalidInput(
                f"this login of account {account_id} was not started here, or was finished already: "
                f"run `engine accounts login {account_id}` and use the URL it prints"
            )
        if until is None or until <= utc_now():
            raise InvalidInput(
                f"this login of account {account_id} is older than {LOGIN_NONCE_LIFETIME.seconds // 60} minutes: "
                f"run `engine accounts login {account_id}` again"
            )

    async def complete_login(
        self, account_id: int, *, access_token: str, broker_user_id: str, issued_at: datetime, expires_at: datetime
    ) -> BrokerAccountRecord:
        """Store the day's token of a finished login. The first login binds the account to its Kite
        user; a later login as another Kite user is refused, so nobody can put their own session in
        someone else's account."""
        plain_token = check.secret_text(access_token, "access_token")
        user_id = check.text(broker_user_id, "broker_user_id", max_length=32)
        async with self._write() as session:
            account = await self._account_row(session, account_id, lock=True)
            if account.broker_user_id is not None and account.broker_user_id != user_id:
                raise InvalidInput(
                    f"account {account_id} belongs to Kite user {account.broker_user_id}; "
                    f"the login was Kite user {user_id}: log in as {account.broker_user_id}"
                )
            account.access_token_encrypted = self._secret_box.encrypt(plain_token)
            account.token_issued_at = issued_at
            account.token_expires_at = expires_at
            account.broker_user_id = user_id
            account.login_nonce_hash = account.login_nonce_expires_at = None
            account.logged_out_at = account.logged_out_reason = account.login_alerted_at = None
            account.updated_at = utc_now()
            await session.flush()
            return _account_record(account)

    async def log_out(self, account_id: int, reason: str) -> BrokerAccountRecord:
        """Forget the account's token (it expired, Kite refused it, or an operator logged out)."""
        async with self._write() as session:
            account = await self._account_row(session, account_id, lock=True)
            if account.access_token_encrypted is not None or account.logged_out_at is None:
                account.access_token_encrypted = None
                account.logged_out_at = utc_now()
                account.logged_out_reason = reason[:300]
                account.updated_at = utc_now()
            await session.flush()
            return _account_record(account)

    async def note_login_needed(self, account_id: int) -> bool:
        """True the first time since the last login: the one alert "log in to Kite" is sent then."""
        async with self._write() as session:
            account = await self._account_row(session, account_id, lock=True)
            if account.login_alerted_at is not None:
                return False
            account.login_alerted_at = utc_now()
            await session.flush()
            return True

    async def broker_credentials(self, account_id: int) -> BrokerCredentials:
        """The api key and today's token; CredentialsMissing if there is none or it has expired."""
        async with self._read() as session:
            account = await self._account_row(session, account_id)
        return self._credentials(
            account.id, account.broker, account.api_key_encrypted, account.access_token_encrypted,
            account.token_expires_at,
        )

    async def broker_app_credentials(self, account_id: int) -> BrokerAppCredentials:
        """The api key and secret, for exchanging a login's request token for an access token."""
        async with self._read() as session:
            account = await self._account_row(session, account_id)
        return BrokerAppCredentials(
            account_id=account.id,
            broker=account.broker,
            api_key=self._secret_box.decrypt(account.api_key_encrypted),
            api_secret=self._secret_box.decrypt(account.api_secret_encrypted),
        )
