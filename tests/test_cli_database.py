"""The CLI (and /health) on a database that is not ready: unmigrated, behind, unreachable. One line that says which
and what to run, the documented exit code, never a traceback; `engine db status|upgrade` fix it."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from apps.api.main import create_app
from apps.cli.common import OK, SCHEMA_BEHIND, UNAVAILABLE
from apps.cli.main import main
from store import Store
from store.migrate import head_revision, upgrade
from tests.fixtures.ports import free_port
from tests.fixtures.temporal import Engine


async def engine_on(url: str, *argv: str) -> tuple[int, str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=250, color_system=None, force_terminal=False)
    code = await asyncio.to_thread(main, list(argv), console)
    return code, buffer.getvalue()


@pytest.fixture
def fresh_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/engine.db"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")  # never reached by these commands
    return url


async def test_an_unmigrated_database_says_to_upgrade_and_db_upgrade_does_it(fresh_sqlite: str) -> None:
    refused_code, refused = await engine_on(fresh_sqlite, "strategies", "list")
    status_code, status = await engine_on(fresh_sqlite, "db", "status", "--json")
    upgraded_code, upgraded = await engine_on(fresh_sqlite, "db", "upgrade")
    listed_code, _ = await engine_on(fresh_sqlite, "strategies", "list", "--json")
    again_code, again = await engine_on(fresh_sqlite, "db", "upgrade")

    assert refused_code == SCHEMA_BEHIND
    assert refused.strip().count("\n") == 0 and "never migrated" in refused and "engine db upgrade" in refused
    assert "Traceback" not in refused
    assert status_code == OK and json.loads(status) == {"revision": None, "head": head_revision(), "up_to_date": False}
    assert upgraded_code == OK and head_revision() in upgraded
    assert listed_code == OK
    assert again_code == OK and "already at" in again


async def test_a_database_behind_names_its_revision(fresh_sqlite: str) -> None:
    store = await Store.connect(fresh_sqlite)
    await upgrade(store.engine, "0002")
    await store.close()

    code, output = await engine_on(fresh_sqlite, "strategies", "list")

    assert code == SCHEMA_BEHIND
    assert "revision 0002" in output and head_revision() in output and "engine db upgrade" in output


async def test_an_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql+asyncpg://engine@127.0.0.1:{free_port()}/engine"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("ENGINE_SECRET_KEY", "Z" * 43 + "=")
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")

    code, output = await engine_on(url, "strategies", "list")

    assert code == UNAVAILABLE
    assert output.strip().count("\n") == 0 and "database unavailable" in output and "Traceback" not in output


async def test_health_fails_while_the_schema_is_behind(fresh_sqlite: str, engine: Engine) -> None:
    store = await Store.connect(fresh_sqlite)
    await upgrade(store.engine, "0002")
    app = create_app(engine.settings, engine.client, store)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
            behind = await api.get("/health")
            await store.migrate()
            current = await api.get("/health")
    finally:
        await store.close()

    assert behind.status_code == 503
    assert behind.json()["schema_revision"] == "0002" and "engine db upgrade" in behind.json()["database"]
    assert current.status_code == 200 and current.json()["schema_revision"] == head_revision()
