"""Async engines for PostgreSQL (asyncpg) and SQLite (aiosqlite), set up the same way everywhere."""

from __future__ import annotations

import json
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from store.errors import InvalidInput

SUPPORTED_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option that lets a SQLite transaction start deferred: readers need no write lock.
READ_ONLY_OPTION = "store_read_only"


def parse_database_url(database_url: str) -> URL:
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise InvalidInput(f"DATABASE_URL {database_url!r} is not a database URL") from exc
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if SUPPORTED_DRIVERS.get(backend) != driver:
        raise InvalidInput(
            f"DATABASE_URL must start with postgresql+asyncpg:// or sqlite+aiosqlite://, not {backend}+{driver}://"
        )
    return url


def create_engine(database_url: str, *, pool_size: int = 5, max_overflow: int = 10, **options: Any) -> AsyncEngine:
    """An engine for a supported URL; for a SQLite file, its directory is created."""
    url = parse_database_url(database_url)
    if url.get_backend_name() == "sqlite":
        _make_sqlite_directory(url.database)
    is_sqlite_memory = url.get_backend_name() == "sqlite" and _is_in_memory(url.database)
    if is_sqlite_memory or "poolclass" in options:
        pool_options: dict[str, Any] = {}  # a single shared connection (StaticPool) or the caller's pool
    else:
        pool_options = {"pool_size": pool_size, "max_overflow": max_overflow}
    engine = create_async_engine(
        url,
        json_serializer=dumps_json,
        # No pre-ping: it costs a round trip per checkout. A connection lost when the database blinks
        # fails its one call, SQLAlchemy drops the pool's stale connections, and the activity retries.
        pool_recycle=300,
        **pool_options,
        **options,
    )
    if url.get_backend_name() == "sqlite":
        _set_up_sqlite(engine)
    return engine


def _is_in_memory(database: str | None) -> bool:
    return not database or database == ":memory:"


def _make_sqlite_directory(database: str | None) -> None:
    if not _is_in_memory(database) and database and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _set_up_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own BEGIN handling skips SELECTs and DDL; we emit BEGIN ourselves below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a read-then-write never fails upgrading its lock.
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def dumps_json(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _json_default(value: Any) -> Any:
    # Decimals travel as strings: a JSON number would come back as float.
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
