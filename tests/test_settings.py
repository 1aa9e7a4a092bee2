"""Settings: the engine's own variables carry the ENGINE_ prefix, `.env` is read from the working
directory, and a bad value names the variable to fix. The CLI is run through its installed entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.settings import Settings, SettingsError

ENGINE = Path(sys.executable).with_name("engine")


def clean_environment(**variables: str) -> dict[str, str]:
    """This process's environment without any setting of the engine, plus `variables`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_") and k != "DATABASE_URL"}
    return {**kept, **variables}


def engine(cwd: Path, *argv: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENGINE), *argv], cwd=cwd, env=clean_environment(**variables), capture_output=True, text=True,
        timeout=60,
    )


def test_variables_of_other_tools_do_not_reach_the_engine(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/engine.db"
    # Another tool's LOG_LEVEL and TASK_QUEUE are its own; before the prefix, LOG_LEVEL=verbose broke the CLI.
    ran = engine(tmp_path, "db", "upgrade", DATABASE_URL=database, LOG_LEVEL="verbose", TASK_QUEUE="elsewhere")

    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert "→ 0" in ran.stdout  # migrated from nothing to the head revision


def test_a_bad_value_names_the_variable_to_fix_in_one_line(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/engine.db"
    ran = engine(tmp_path, "db", "status", DATABASE_URL=database, ENGINE_ORDER_TIMEOUT_SECONDS="-1")

    assert ran.returncode == 1
    said = " ".join((ran.stdout + ran.stderr).split())
    assert "ENGINE_ORDER_TIMEOUT_SECONDS='-1': Input should be greater than 0" in said, said
    assert "Traceback" not in said and "order_timeout_seconds" not in said


def test_dot_env_in_the_working_directory_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "ENGINE_ORDER_TIMEOUT_SECONDS=42\nENGINE_TASK_QUEUE=from-dot-env\nDATABASE_URL=sqlite+aiosqlite:///x.db\n"
    )
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("ENGINE_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("ENGINE_TASK_QUEUE", "from-environment")

    settings = Settings.from_environment()

    assert settings.order_timeout_seconds == 42.0
    assert settings.task_queue == "from-environment"
    assert settings.database_url == "sqlite+aiosqlite:///x.db"


def test_settings_error_lists_every_bad_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENGINE_LOG_FORMAT", "xml")
    monkeypatch.setenv("ENGINE_METRICS_PORT", "70000")

    with pytest.raises(SettingsError) as refused:
        Settings.from_environment()

    message = str(refused.value)
    assert "ENGINE_LOG_FORMAT='xml'" in message and "ENGINE_METRICS_PORT='70000'" in message
    assert message.endswith("(set in the environment or in .env)")
