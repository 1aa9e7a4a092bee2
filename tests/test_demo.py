"""`make demo`'s scenario, run as a user runs it: its own embedded stack, exit status 0 only if right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_scenario_comes_out_right(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_EXIT": "1"}
    env.pop("DATABASE_URL", None)  # the embedded default: SQLite under ./data
    done = subprocess.run(
        [sys.executable, "-m", "dev.demo"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=240, stdin=subprocess.DEVNULL,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    assert "realized P&L: -617.50 INR" in done.stdout
    assert "the broker received exactly 2 orders (2)" in done.stdout
    assert (tmp_path / "data" / "engine.db").exists() and (tmp_path / "data" / "temporal.db").exists()
