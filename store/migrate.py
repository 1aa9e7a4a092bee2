"""Alembic migrations, run programmatically against the store's database (PostgreSQL and SQLite alike)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from store.errors import InvalidInput

# The revisions ship inside the package, so `engine db upgrade` works from an installed wheel; a
# checkout's alembic.ini (for the `alembic` command) is read when there is one.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
ALEMBIC_INI = MIGRATIONS_DIR.parent.parent / "alembic.ini"
# pg_advisory_xact_lock key held while migrating, so concurrent starts do not race.
MIGRATION_LOCK_ID = 0x6B69746573746F72
# Alembic keeps its migration context in module globals: one command at a time per process.
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(database_url: str | None = None) -> Config:
    """The repository's alembic.ini, wherever the process runs from; optionally aimed at a URL."""
    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["configure_logger"] = False
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await asyncio.to_thread(_run_command, _url_of(engine), command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    await asyncio.to_thread(_run_command, _url_of(engine), command.downgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync_connection: MigrationContext.configure(sync_connection).get_current_revision()
        )


def _url_of(engine: AsyncEngine) -> str:
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise InvalidInput("an in-memory SQLite database cannot be migrated; use a file such as data/engine.db")
    return url.render_as_string(hide_password=False)


def _run_command(database_url: str, alembic_command: Callable[[Config, str], object], revision: str) -> None:
    """In a worker thread: env.py runs its own event loop and engine there."""
    with _ALEMBIC_LOCK:
        alembic_command(alembic_config(database_url), revision)
