"""Users with hashed API keys; broker accounts with secrets encrypted at rest; the key's origin."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from engine.settings import Settings
from store import (
    BrokerAccountNotFound,
    CredentialsMissing,
    InvalidInput,
    SecretKeyError,
    Store,
    UserNotFound,
    load_or_create_key,
)

API_KEY, API_SECRET, TOKEN = "kiteapikey123", "kite-api-secret-456", "kite-access-token-789"


async def test_api_key_finds_its_user_and_is_stored_only_as_a_hash(store: Store) -> None:
    user, plain_key = await store.create_user("alice", is_admin=True)

    found = await store.user_by_api_key(plain_key)
    assert found == user and found.is_admin

    async with store.engine.connect() as connection:
        stored = (await connection.execute(text("SELECT api_key_hash, api_key_prefix FROM users"))).one()
    assert plain_key not in stored
    assert stored.api_key_hash == hashlib.sha256(plain_key.encode()).hexdigest()


async def test_a_wrong_or_malformed_api_key_finds_nobody(store: Store) -> None:
    _, plain_key = await store.create_user("alice")
    same_prefix_other_secret = plain_key[:-4] + ("AAAA" if not plain_key.endswith("AAAA") else "BBBB")

    assert await store.user_by_api_key(same_prefix_other_secret) is None
    assert await store.user_by_api_key("not-a-key") is None
    assert await store.user_by_api_key("") is None


async def test_usernames_are_unique_and_checked(store: Store) -> None:
    await store.create_user("alice")
    with pytest.raises(InvalidInput, match="taken"):
        await store.create_user("alice")
    with pytest.raises(InvalidInput, match="username"):
        await store.create_user("has space")
    with pytest.raises(InvalidInput, match="username"):
        await store.create_user("")


async def test_broker_secrets_are_encrypted_at_rest(store: Store) -> None:
    user, _ = await store.create_user("alice")
    account = await store.add_broker_account(user.id, api_key=API_KEY, api_secret=API_SECRET, access_token=TOKEN)

    async with store.engine.connect() as connection:
        row = (await connection.execute(text("SELECT * FROM broker_accounts"))).one()
    raw = " ".join(str(value) for value in row)
    for secret in (API_KEY, API_SECRET, TOKEN):
        assert secret not in raw
    assert account.has_access_token

    credentials = await store.broker_credentials(account.id)
    assert (credentials.api_key, credentials.access_token) == (API_KEY, TOKEN)
    app = await store.broker_app_credentials(account.id)
    assert (app.api_key, app.api_secret) == (API_KEY, API_SECRET)


async def test_credentials_never_show_their_secrets(store: Store) -> None:
    user, _ = await store.create_user("alice")
    account = await store.add_broker_account(user.id, api_key=API_KEY, api_secret=API_SECRET, access_token=TOKEN)

    credentials = await store.broker_credentials(account.id)
    app = await store.broker_app_credentials(account.id)
    for shown in (repr(credentials), str(credentials), repr(app), repr(store)):
        for secret in (API_KEY, API_SECRET, TOKEN):
            assert secret not in shown


async def test_credentials_missing_until_a_token_is_set_and_again_once_it_expires(store: Store) -> None:
    user, _ = await store.create_user("alice")
    account = await store.add_broker_account(user.id, api_key=API_KEY, api_secret=API_SECRET)
    assert not account.has_access_token
    with pytest.raises(CredentialsMissing, match="has no access token"):
        await store.broker_credentials(account.id)

    tomorrow = datetime.now(UTC) + timedelta(days=1)
    updated = await store.set_access_token(account.id, TOKEN, tomorrow)
    assert updated.has_access_token and updated.token_expires_at == tomorrow
    assert (await store.broker_credentials(account.id)).access_token == TOKEN

    await store.set_access_token(account.id, "yesterdays-token", datetime.now(UTC) - timedelta(minutes=1))
    with pytest.raises(CredentialsMissing, match="expired") as expired:
        await store.broker_credentials(account.id)
    assert "yesterdays-token" not in str(expired.value)


async def test_unknown_ids_and_bad_secrets_are_refused(store: Store) -> None:
    with pytest.raises(UserNotFound):
        await store.add_broker_account(999, api_key=API_KEY, api_secret=API_SECRET)
    with pytest.raises(BrokerAccountNotFound):
        await store.broker_credentials(999)
    with pytest.raises(BrokerAccountNotFound):
        await store.set_access_token(999, TOKEN, None)
    user, _ = await store.create_user("alice")
    with pytest.raises(InvalidInput, match="api_secret"):
        await store.add_broker_account(user.id, api_key=API_KEY, api_secret="")
    with pytest.raises(InvalidInput, match="timezone-aware"):
        await store.add_broker_account(
            user.id, api_key=API_KEY, api_secret=API_SECRET, access_token=TOKEN, token_expires_at=datetime(2026, 1, 1)
        )
    too_long = "x" * 600
    with pytest.raises(InvalidInput) as refused:
        await store.add_broker_account(user.id, api_key=API_KEY, api_secret=too_long)
    assert too_long not in str(refused.value)


async def test_a_store_with_another_key_cannot_read_the_secrets(store: Store) -> None:
    user, _ = await store.create_user("alice")
    account = await store.add_broker_account(user.id, api_key=API_KEY, api_secret=API_SECRET, access_token=TOKEN)

    url = store.engine.url.render_as_string(hide_password=False)
    other = await Store.connect(url, Fernet.generate_key().decode())
    try:
        with pytest.raises(SecretKeyError, match="not the one they were encrypted with"):
            await other.broker_credentials(account.id)
    finally:
        await other.close()


def test_sqlite_without_a_key_makes_one_beside_the_database_once(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/data/engine.db", engine_secret_key=None)

    key = load_or_create_key(settings)
    key_file = tmp_path / "data" / "secret.key"
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert load_or_create_key(settings) == key
    Fernet(key.encode())  # a usable key


def test_the_embedded_default_keeps_its_key_in_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    key = load_or_create_key(Settings(database_url="sqlite+aiosqlite:///data/engine.db", engine_secret_key=None))
    assert (tmp_path / "data" / "secret.key").read_text().strip() == key


def test_an_explicit_key_wins_and_a_malformed_one_is_refused(tmp_path: Path) -> None:
    given = Fernet.generate_key().decode()
    url = f"sqlite+aiosqlite:///{tmp_path}/engine.db"
    assert load_or_create_key(Settings(database_url=url, engine_secret_key=given)) == given
    assert not (tmp_path / "secret.key").exists()
    with pytest.raises(SecretKeyError, match="not a Fernet key"):
        load_or_create_key(Settings(database_url=url, engine_secret_key="not-a-key"))


def test_a_corrupt_key_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("garbage\n")
    url = f"sqlite+aiosqlite:///{tmp_path}/engine.db"
    with pytest.raises(SecretKeyError, match="does not hold a Fernet key"):
        load_or_create_key(Settings(database_url=url, engine_secret_key=None))


async def test_postgresql_without_a_key_refuses_to_start(pg_url: str) -> None:
    with pytest.raises(SecretKeyError, match="ENGINE_SECRET_KEY is not set"):
        load_or_create_key(Settings(database_url=pg_url, engine_secret_key=None))
    with pytest.raises(SecretKeyError, match="ENGINE_SECRET_KEY is not set"):
        await Store.connect(pg_url)


async def test_an_unsupported_database_url_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"postgresql\+asyncpg:// or sqlite\+aiosqlite://"):
        await Store.connect("postgresql://postgres@127.0.0.1/db", Fernet.generate_key().decode())
    with pytest.raises(InvalidInput, match="not a database URL"):
        await Store.connect("nonsense", Fernet.generate_key().decode())
