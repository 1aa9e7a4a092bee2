"""`make demo` run as a user runs it: its own embedded stack, exit status 0 only if right; run twice in a
row, while one is still up, and after one crashed: never two dev servers on one data/temporal.db."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.ports import free_port

DEMO_TIMEOUT_SECONDS = 240


def demo_environment() -> dict[str, str]:
    env = {
        **os.environ, "DEMO_TEMPORAL_PORT": str(free_port()), "DEMO_UI_PORT": str(free_port()),
        "DEMO_PAPER_PORT": str(free_port()),
    }
    env.pop("DATABASE_URL", None)  # the embedded default: SQLite under ./data
    env.pop("DEMO_EXIT", None)
    return env


def run_demo(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dev.demo"], cwd=folder, env={**env, "DEMO_EXIT": "1"}, capture_output=True,
        text=True, timeout=DEMO_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL,
    )


def assert_came_out_right(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    assert "realized P&L: -617.50 INR" in done.stdout
    assert "the broker received exactly 2 orders (2)" in done.stdout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_the_demo_scenario_comes_out_right_twice_in_a_row(tmp_path: Path) -> None:
    env = demo_environment()

    first, second = run_demo(tmp_path, env), run_demo(tmp_path, env)

    assert_came_out_right(first)
    assert_came_out_right(second)
    assert (tmp_path / "data" / "engine.db").exists() and (tmp_path / "data" / "temporal.db").exists()
    assert not (tmp_path / "data" / "demo.json").exists()


def test_a_second_demo_finds_the_running_one_and_one_after_a_crash_stops_its_orphan(tmp_path: Path) -> None:
    env = demo_environment()
    orphan: int | None = None
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        [sys.executable, "-m", "dev.demo"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT_SECONDS
        while "stays up" not in (tmp_path / "first.log").read_text():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.2)
        up = (tmp_path / "first.log").read_text()
        assert f"export TEMPORAL_ADDRESS=127.0.0.1:{env['DEMO_TEMPORAL_PORT']}" in up

        while_up = run_demo(tmp_path, env)

        assert while_up.returncode == 3, while_up.stdout + while_up.stderr
        assert f"already running from this folder (pid {first.pid})" in while_up.stdout

        first.send_signal(signal.SIGKILL)  # a crash: its dev server, in a session of its own, lives on
        first.wait(10)
        state = (tmp_path / "data" / "demo.json").read_text()
        orphan = int(state.split('"temporal_pid": ')[1].split(",")[0])
        assert alive(orphan)

        after_crash = run_demo(tmp_path, env)

        assert "ended without stopping its dev server" in after_crash.stdout
        assert_came_out_right(after_crash)
        assert not alive(orphan)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        if orphan is not None and alive(orphan):
            os.kill(orphan, signal.SIGKILL)
        log.close()
