"""Alembic: a fresh database, an upgrade from the previous revision with data in it, downgrade and
upgrade again, the command line with DATABASE_URL, and a second start waiting for the first."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from store import InvalidInput, Store
from store import migrate as migrations
from store.models import Base, BrokerAccount, Strategy
from tests.fixtures.db import (
    FILLED_AT,
    PG_HOST,
    PG_PORT,
    PG_USER,
    accept,
    create_pg_database,
    drop_pg_database,
    new_order,
    pg_database_url,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ORDER_TABLES = {"orders", "order_logs", "order_events"}
ACCOUNT_TABLES = {"users", "broker_accounts", "strategies"}
RATE_LIMIT_TABLES = {"order_rate_limits"}
RECONCILE_TABLES = {"reconcile_reports"}
MARKET_DATA_TABLES = {"strategy_events"}


@pytest.fixture(params=["postgres", "sqlite"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/data/engine.db"
        return
    name = await create_pg_database("test_migrations")
    try:
        yield pg_database_url(name)
    finally:
        await drop_pg_database(name)


@pytest.fixture
async def empty_store(empty_url: str, engine_secret_key: str) -> AsyncIterator[Store]:
    store = await Store.connect(empty_url, engine_secret_key)
    try:
        yield store
    finally:
        await store.close()


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    return set(names) - {"alembic_version"}


async def schema_differences(engine: AsyncEngine) -> list[object]:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata)
        )


async def test_a_fresh_database_migrates_to_exactly_the_models(empty_store: Store) -> None:
    assert await migrations.current_revision(empty_store.engine) is None

    await empty_store.migrate()
    assert await migrations.current_revision(empty_store.engine) == migrations.head_revision()
    assert await tables(empty_store.engine) == (
        ACCOUNT_TABLES | ORDER_TABLES | RATE_LIMIT_TABLES | RECONCILE_TABLES | MARKET_DATA_TABLES
    )
    assert await schema_differences(empty_store.engine) == []

    await empty_store.migrate()  # a second start finds nothing to do
    assert await migrations.current_revision(empty_store.engine) == migrations.head_revision()


async def test_upgrade_from_the_previous_revision_keeps_the_data(empty_store: Store) -> None:
    store = empty_store
    await migrations.upgrade(store.engine, "0001")
    assert await migrations.current_revision(store.engine) == "0001"
    assert await tables(store.engine) == ACCOUNT_TABLES

    # Written as that revision's code wrote them: only the columns it has.
    user, api_key = await store.create_user("alice")
    account_id, strategy_id = await account_and_strategy_at_0001(store, user.id)

    await store.migrate()
    assert await migrations.current_revision(store.engine) == migrations.head_revision()
    account = await store.get_broker_account(account_id)
    assert (account.user_id, account.has_access_token, account.broker_user_id) == (user.id, True, None)
    strategy = await store.get_strategy(strategy_id)
    assert (strategy.name, strategy.symbol, strategy.quantity, strategy.stop_loss_price, strategy.status) == (
        "intraday", "RELIANCE", 10, Decimal("2400.05"), "STOPPED"
    )
    # A status change writes a strategy event (0006's table): started only once the schema has it.
    strategy = await store.set_strategy_status(strategy.id, "RUNNING")
    assert await store.user_by_api_key(api_key) == user
    assert (await store.broker_credentials(account.id)).access_token == "t"
    order = await store.begin_order(new_order(strategy), accept)
    await store.finish_order(order.workflow_id, "FAILED", "REJECTED", {}, "test", FILLED_AT)
    assert (await store.get_order(order.workflow_id)).outcome == "FAILED"


async def account_and_strategy_at_0001(store: Store, user_id: int) -> tuple[int, int]:
    """A broker account and a strategy as 0001 holds them: only the columns of that revision."""
    box, now = store._secret_box, datetime.now(UTC)
    async with store.engine.begin() as connection:
        account_id = (await connection.execute(insert(BrokerAccount).values(
            user_id=user_id, broker="kite", api_key_encrypted=box.encrypt("k"), api_secret_encrypted=box.encrypt("s"),
            access_token_encrypted=box.encrypt("t"), created_at=now, updated_at=now,
        ).returning(BrokerAccount.id))).scalar_one()
        strategy_id = (await connection.execute(insert(Strategy).values(
            user_id=user_id, broker_account_id=account_id, name="intraday", symbol="RELIANCE", exchange="NSE",
            quantity=10, product="MIS", stop_loss_price=Decimal("2400.05"), status="STOPPED", position="FLAT",
            open_quantity=0, realized_pnl=Decimal("0"), position_cycle=1, sl_triggered=False,
            needs_intervention=False, version=1, created_at=now, updated_at=now,
        ).returning(Strategy.id))).scalar_one()
    return account_id, strategy_id


async def test_downgrade_then_upgrade_again(empty_store: Store) -> None:
    store = empty_store
    await store.migrate()

    await migrations.downgrade(store.engine, "0001")
    assert await tables(store.engine) == ACCOUNT_TABLES
    await migrations.downgrade(store.engine, "base")
    assert await tables(store.engine) == set()
    assert await migrations.current_revision(store.engine) is None

    await store.migrate()
    assert await schema_differences(store.engine) == []
    user, _ = await store.create_user("alice")
    assert user.id == 1


async def run_alembic_upgrade(database_url: str, cwd: Path) -> str:
    """`alembic upgrade head` in its own process, with DATABASE_URL set; returns its log."""
    environment = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(PROJECT_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        "-c",
        str(PROJECT_ROOT / "alembic.ini"),
        "upgrade",
        "head",
        cwd=cwd,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    return stderr.decode()


async def test_the_alembic_command_line_follows_database_url(
    empty_url: str, tmp_path: Path, engine_secret_key: str
) -> None:
    log = await run_alembic_upgrade(empty_url, tmp_path)
    assert "Running upgrade 0001 -> 0002" in log

    store = await Store.connect(empty_url, engine_secret_key)
    try:
        assert await migrations.current_revision(store.engine) == migrations.head_revision()
    finally:
        await store.close()


async def test_a_second_migration_waits_for_the_one_in_progress(engine_secret_key: str) -> None:
    name = await create_pg_database("test_migrations")
    url = pg_database_url(name)
    peer = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=name)
    store = await Store.connect(url, engine_secret_key)
    try:
        peer_migration = peer.transaction()
        await peer_migration.start()
        await peer.execute("SELECT pg_advisory_xact_lock($1)", migrations.MIGRATION_LOCK_ID)

        migrating = asyncio.create_task(store.migrate())
        waiting = 0
        for _ in range(600):  # until the migration queues behind the peer's lock
            assert not migrating.done(), "the migration ran without waiting for the one in progress"
            waiting = await peer.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting == 1
        assert await tables(store.engine) == set()

        await peer_migration.rollback()
        await migrating
        assert await migrations.current_revision(store.engine) == migrations.head_revision()
    finally:
        await store.close()
        await peer.close()
        await drop_pg_database(name)


async def test_an_in_memory_sqlite_database_is_refused_with_a_reason(engine_secret_key: str) -> None:
    store = await Store.connect("sqlite+aiosqlite:///:memory:", engine_secret_key)
    try:
        with pytest.raises(InvalidInput, match="use a file"):
            await store.migrate()
    finally:
        await store.close()
