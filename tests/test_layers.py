"""The layers of the code base: each package imports only the ones below it, never a sibling or one above.

    engine       core types: ids, models, settings, errors, order states, market hours, Temporal wiring
    brokers      the broker interface, the Kite adapter, the paper broker   (beside store, not on it)
    store        models, migrations (store/migrations), the repository      (beside brokers, not on it)
    activities   every side effect of a workflow
    workflows    deterministic code only
    starter      the library that starts work: orders, controls, schedules, the stop-loss listener
    apps         the programs that run in production: worker, HTTP API, CLI, codec server, Temporal set-up
    dev          the programs of a laptop and CI: demo, benchmark, dev server, paper broker
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: dict[str, int] = {
    "engine": 0,
    "brokers": 1,
    "store": 1,
    "activities": 2,
    "workflows": 3,
    "starter": 4,
    "apps": 5,
    "dev": 6,
}
# Alembic's environment and revisions (inside store/) read the store's tables and the settings, nothing more.
MIGRATIONS_MAY_IMPORT = {"engine", "store"}


def project_imports(path: Path) -> set[str]:
    """The project's top-level packages that a file imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found & (set(LAYERS) | {"worker"})


def layer_violations(root: Path, package: str) -> list[str]:
    rank = LAYERS[package]
    wrong = []
    for path in sorted((root / package).rglob("*.py")):
        for imported in sorted(project_imports(path) - {package}):
            if imported == "worker" or LAYERS[imported] >= rank:
                wrong.append(f"{path.relative_to(root)} imports {imported}")
    return wrong


@pytest.mark.parametrize("package", [package for package, _ in sorted(LAYERS.items(), key=lambda item: item[1])])
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    assert layer_violations(ROOT, package) == []


def test_migrations_import_only_the_store_and_the_settings() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {imported}"
        for path in sorted((ROOT / "store" / "migrations").rglob("*.py"))
        for imported in sorted(project_imports(path) - MIGRATIONS_MAY_IMPORT)
    ]
    assert wrong == []


def test_every_package_of_the_project_has_a_layer() -> None:
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(LAYERS)


def test_the_check_sees_upward_and_sideways_imports(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    late_import = "import json\n\ndef f():\n    from starter.orders import OrderStarter\n"
    (tmp_path / "engine" / "ids.py").write_text(late_import)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "orders.py").write_text("from brokers.base import is_terminal\nfrom engine import ids\n")

    assert layer_violations(tmp_path, "engine") == ["engine/ids.py imports starter"]
    assert layer_violations(tmp_path, "store") == ["store/orders.py imports brokers"]
