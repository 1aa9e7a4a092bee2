"""The store's engine, its transactions, and the row lookups every part of it shares."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Self, TypeVar, cast

from sqlalchemy import Select, Table, Update, bindparam, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from store import migrate as migrations
from store.clock import DatabaseClock
from store.db import READ_ONLY_OPTION, create_engine, parse_database_url
from store.errors import (
    BrokerAccountNotFound,
    ConcurrentUpdate,
    CredentialsMissing,
    InvalidInput,
    OrderNotFound,
    SchemaOutOfDate,
    StoreUnavailable,
    StrategyNotFound,
    UserNotFound,
)
from store.models import BrokerAccount, Order, OrderEvent, OrderLog, Strategy, User
from store.records import BrokerCredentials, StrategyRecord
from store.secrets import SecretBox, resolve_secret_key
from store.validation import positive_int

RecordT = TypeVar("RecordT")


# The tables the order path writes with Core (see LockedRow).
ORDERS = cast(Table, Order.__table__)
STRATEGIES = cast(Table, Strategy.__table__)
ORDER_LOGS = cast(Table, OrderLog.__table__)
ORDER_EVENTS = cast(Table, OrderEvent.__table__)
BROKER_ACCOUNTS = cast(Table, BrokerAccount.__table__)


@contextlib.contextmanager
def _unavailable_when_down() -> Iterator[None]:
    """A lost or refused database connection, raised as StoreUnavailable (retryable)."""
    try:
        yield
    except (OperationalError, InterfaceError, PoolTimeout, OSError) as exc:
        raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_record(record_type: type[RecordT], row: Any) -> RecordT:
    """A frozen record from an ORM row, field by field (records are named after their columns)."""
    names = [field.name for field in dataclasses.fields(record_type)]  # type: ignore[arg-type]
    return record_type(**{name: _plain(getattr(row, name)) for name in names})


def _plain(value: Any) -> Any:
    """Enum members assigned in this transaction read back as the plain strings the database holds."""
    return value.value if isinstance(value, Enum) else value


class LockedRow:
    """A row read with SQLAlchemy Core under its lock, changed in place as an ORM object would be, and
    written back by `write_back` as one UPDATE of the columns that changed.

    The order path's transactions use it instead of the ORM: they hold one order and one strategy row
    each, and the ORM's identity map and unit of work cost more CPU than the SQL they send.
    """

    def __init__(self, table: Table, values: Mapping[Any, Any]):
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_read", dict(values))
        self.__dict__.update(values)

    @classmethod
    def of(cls, table: Table, row: Mapping[Any, Any]) -> LockedRow:
        """The columns of `table` in a result row that holds others too (a join, a subquery's value)."""
        return cls(table, {column.key: row[column] for column in table.c})

    def __getattr__(self, name: str) -> Any:  # only for names that are not columns
        raise AttributeError(f"{self._table.name} has no column {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._read:
            raise AttributeError(f"{self._table.name} has no column {name!r}")
        self.__dict__[name] = value

    def changes(self) -> dict[str, Any]:
        return {name: self.__dict__[name] for name, old in self._read.items() if _differs(self.__dict__[name], old)}


def _differs(new: Any, old: Any) -> bool:
    if type(new) is not type(old) or new != old:
        return True
    return isinstance(new, Decimal) and str(new) != str(old)  # 1.5 and 1.50 are stored as written


# The order path's statements are built once, with their values bound at execution: SQLAlchemy then
# neither rebuilds nor re-keys them for its compiled cache on every call.
@functools.cache
def row_by(table: Table, column: str, *, for_update: bool = False) -> Select[Any]:
    """SELECT the rows of `table` whose `column` equals the bound `key` (held until commit with for_update)."""
    statement = select(table).where(table.c[column] == bindparam("key"))
    return statement.with_for_update() if for_update else statement


@functools.cache
def _update_by_id(table: Table) -> Update:
    """UPDATE one row by its `row_id` (and its `row_version`, where the table has one); the columns to
    set are the other bound values, and SQLAlchemy compiles one statement per set of column names."""
    statement = update(table).where(table.c.id == bindparam("row_id"))
    if "version" in table.c:
        statement = statement.where(table.c.version == bindparam("row_version"))
    return statement


async def lock_row(conn: AsyncConnection, table: Table, column: str, key: Any) -> LockedRow | None:
    """The one row whose `column` is `key`, held (SELECT ... FOR UPDATE) until the transaction ends."""
    found = (await conn.execute(row_by(table, column, for_update=True), {"key": key})).mappings().first()
    return LockedRow(table, found) if found is not None else None


async def write_back(conn: AsyncConnection, row: LockedRow) -> None:
    """One UPDATE of what changed on `row`; a table with a `version` column has it checked and bumped,
    as the ORM's version counter does."""
    changes = row.changes()
    if not changes:
        return
    table = row._table
    values = {"row_id": row._read["id"], **changes}
    if "version" in table.c:
        version = row._read["version"]
        values["row_version"], values["version"] = version, version + 1
        changes["version"] = version + 1
    result = await conn.execute(_update_by_id(table), values)
    if result.rowcount != 1:
        raise ConcurrentUpdate(f"a {table.name} row changed while this transaction wrote it; retry")
    row.__dict__.update(changes)
    row._read.update(changes)


class StoreBase:
    """Holds the engine; `_write()` and `_read()` open one transaction each."""

    def __init__(self, engine: AsyncEngine, secret_box: SecretBox):
        self._engine = engine
        self._secret_box = secret_box
        self._write_sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(
            engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False
        )
        # SQLite has one writer at a time; queueing our own writers here beats SQLite's sleeping busy-wait.
        self._write_turn = asyncio.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        self.database_clock = DatabaseClock()

    @classmethod
    async def connect(
        cls, database_url: str, secret_key: str | None = None, *, pool_size: int = 5, max_overflow: int = 10
    ) -> Self:
        """Open the store; does not migrate. Without a key, SQLite uses (or makes) secret.key beside
        its file and PostgreSQL refuses to start."""
        parse_database_url(database_url)
        secret_box = SecretBox(resolve_secret_key(database_url, secret_key))
        engine = create_engine(database_url, pool_size=pool_size, max_overflow=max_overflow, hide_parameters=True)
        return cls(engine, secret_box)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._engine.url.render_as_string(hide_password=True)})"

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (alembic upgrade head)."""
        await migrations.upgrade(self._engine, "head")

    async def schema_revision(self) -> tuple[str | None, str]:
        """(the database's revision, the newest this code knows); StoreUnavailable when unreachable."""
        try:
            current = await migrations.current_revision(self._engine)
        except (DBAPIError, PoolTimeout, OSError) as exc:  # refused, unknown database, bad password, ...
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        return current, migrations.head_revision()

    async def require_current_schema(self) -> None:
        """Raise SchemaOutOfDate unless the database is at the newest revision."""
        current, head = await self.schema_revision()
        if current != head:
            raise SchemaOutOfDate(current, head)

    async def close(self) -> None:
        await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One transaction that commits when the block ends and rolls back on any error."""
        try:
            with _unavailable_when_down():
                async with self._write_turn, self._write_sessions.begin() as session:
                    yield session
        except StaleDataError as exc:
            raise ConcurrentUpdate(f"a row changed while this transaction wrote it; retry ({exc})") from exc

    @contextlib.asynccontextmanager
    async def _write_core(self) -> AsyncIterator[AsyncConnection]:
        """`_write()` on a connection, without an ORM session: for the order path's Core transactions."""
        with _unavailable_when_down():
            async with self._write_turn, self._engine.begin() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        with _unavailable_when_down():
            async with self._read_sessions.begin() as session:
                yield session

    def _credentials(
        self,
        account_id: int,
        broker: str,
        api_key_encrypted: str,
        access_token_encrypted: str | None,
        token_expires_at: datetime | None,
    ) -> BrokerCredentials:
        """An account's api key and today's token, decrypted; CredentialsMissing if it has no token
        or the token has expired."""
        if access_token_encrypted is None:
            raise CredentialsMissing(account_id, "has no access token")
        if token_expires_at is not None and token_expires_at <= utc_now():
            raise CredentialsMissing(
                account_id, f"has an access token that expired at {token_expires_at:%Y-%m-%d %H:%M} UTC"
            )
        return BrokerCredentials(
            account_id=account_id,
            broker=broker,
            api_key=self._secret_box.decrypt(api_key_encrypted),
            access_token=self._secret_box.decrypt(access_token_encrypted),
            token_expires_at=token_expires_at,
        )

    async def _user_row(self, session: AsyncSession, user_id: int) -> User:
        positive_int(user_id, "user_id")
        user = await session.get(User, user_id)
        if user is None:
            raise UserNotFound(user_id)
        return user

    async def _account_row(self, session: AsyncSession, account_id: int, *, lock: bool = False) -> BrokerAccount:
        positive_int(account_id, "account_id")
        account = await session.get(BrokerAccount, account_id, with_for_update=lock)
        if account is None:
            raise BrokerAccountNotFound(account_id)
        return account

    async def _strategy_row(self, session: AsyncSession, strategy_id: int, *, lock: bool = False) -> Strategy:
        """The strategy; with lock=True held (SELECT ... FOR UPDATE) until the transaction ends."""
        positive_int(strategy_id, "strategy_id")
        query = select(Strategy).where(Strategy.id == strategy_id)
        if lock:
            query = query.with_for_update().execution_options(populate_existing=True)
        strategy = await session.scalar(query)
        if strategy is None:
            raise StrategyNotFound(strategy_id)
        return strategy

    async def _order_row(self, session: AsyncSession, workflow_id: str, *, lock: bool = False) -> Order:
        query = select(Order).where(Order.workflow_id == workflow_id)
        if lock:
            query = query.with_for_update().execution_options(populate_existing=True)
        order = await session.scalar(query)
        if order is None:
            raise OrderNotFound(workflow_id)
        return order

    async def _lock_order_and_strategy(
        self, session: AsyncSession, workflow_id: str, *, strategy_id: int | None = None
    ) -> tuple[Order, Strategy]:
        """Locks in the one order every writer uses (strategy, then order), so writers never deadlock.
        A caller that knows the order's strategy passes it: the order row is then read once."""
        if strategy_id is None:
            strategy_id = (await self._order_row(session, workflow_id)).strategy_id
        strategy = await self._strategy_row(session, strategy_id, lock=True)
        order = await self._order_row(session, workflow_id, lock=True)
        if order.strategy_id != strategy.id:
            raise InvalidInput(f"order {workflow_id} belongs to strategy {order.strategy_id}, not {strategy.id}")
        return order, strategy

    async def _lock_strategy_row(self, conn: AsyncConnection, strategy_id: int) -> LockedRow:
        """`_strategy_row(lock=True)` for Core."""
        strategy = await lock_row(conn, STRATEGIES, "id", positive_int(strategy_id, "strategy_id"))
        if strategy is None:
            raise StrategyNotFound(strategy_id)
        return strategy


def strategy_record(row: Strategy | LockedRow) -> StrategyRecord:
    return to_record(StrategyRecord, row)


def flag_for_intervention(strategy: Strategy | LockedRow, why: str, now: datetime) -> None:
    """Flag the locked strategy for a person; a flag already up keeps its first reason (usually the cause)."""
    if strategy.needs_intervention:
        if why == strategy.intervention_reason:
            return
        strategy.last_error = why
    else:
        strategy.needs_intervention = True
        strategy.intervention_reason, strategy.intervention_at = why, now
        strategy.intervention_cleared_by, strategy.intervention_cleared_at = None, None
    strategy.last_action = f"manual intervention needed: {why}"
    strategy.updated_at = now
