"""A short chaos run in the suite: `scripts/chaos.py` on a stack of its own (private PostgreSQL cluster,
Temporal dev server, paper broker and worker processes), a few dozen order legs through a held request,
an accept-then-timeout, a killed worker and random faults; broker and store must agree at the end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_chaos_run_leaves_broker_and_store_in_agreement() -> None:
    run = subprocess.run(
        [sys.executable, "scripts/chaos.py", "--strategies", "12", "--cycles", "1", "--seed", "3", "--no-restarts"],
        cwd=ROOT, capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL,
    )

    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "chaos: OK" in run.stdout
    legs = re.search(r"order legs started (\d+)", run.stdout)
    assert legs is not None and int(legs.group(1)) >= 24, run.stdout
    faults = re.search(r"^faults: (.*)$", run.stdout, flags=re.MULTILINE)
    assert faults is not None
    for kind in ("worker SIGKILL", "latency past the client timeout", "accept-then-timeout"):
        assert kind in faults.group(1), run.stdout
    assert "positions equal 12/12" in run.stdout
