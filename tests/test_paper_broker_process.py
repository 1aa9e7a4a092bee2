"""The paper broker as a process: the state file across restarts, and the `paper-broker` command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from kiteconnect import KiteConnect

from brokers.paper.control import SimControl
from brokers.paper.persistence import StateFileError
from brokers.paper.testing import PaperBrokerServer
from tests.fixtures.paper import wait_for_status
from tests.fixtures.ports import free_port

START_SECONDS = 15.0
STOP_SECONDS = 10.0


def test_a_restart_keeps_the_order_book_accounts_tokens_and_prices(tmp_path: Path) -> None:
    state_file = tmp_path / "paper.json"
    with PaperBrokerServer(port=0, state_file=state_file) as server:
        kite = server.kite("keeper")
        server.control.set_account("keeper", cash="500000")
        filled = kite.place_order("regular", "NSE", "INFY", "BUY", 10, "MIS", "MARKET", market_protection=-1,
                                  tag="kept1")
        wait_for_status(kite, filled, "COMPLETE")
        resting = kite.place_order("regular", "NSE", "INFY", "BUY", 5, "CNC", "LIMIT", price=1400, tag="kept2")
        server.control.set_price("INFY", "1450")
        history_before = kite.order_history(filled)
        port, token = server.port, kite.access_token

    with PaperBrokerServer(port=port, state_file=state_file) as server:
        same = KiteConnect("keeper", access_token=token, root=server.url, timeout=2)
        assert [(o["order_id"], o["tag"], o["status"]) for o in same.orders()] == [
            (filled, "kept1", "COMPLETE"), (resting, "kept2", "OPEN")]
        assert same.order_history(filled) == history_before
        assert [trade["order_id"] for trade in same.trades()] == [filled]
        assert same.positions()["net"][0]["quantity"] == 10
        assert same.margins()["equity"]["available"]["cash"] == 500000
        assert same.ltp("NSE:INFY")["NSE:INFY"]["last_price"] == 1450
        assert [o["tag"] for o in server.control.orders()] == ["kept1", "kept2"]

        # The resting order is live again, and new ids do not repeat old ones.
        server.control.set_price("INFY", "1399.95")
        wait_for_status(same, resting, "COMPLETE")
        newer = same.place_order("regular", "NSE", "INFY", "SELL", 1, "MIS", "MARKET", market_protection=-1)
        assert newer not in (filled, resting)


def test_an_order_is_in_the_state_file_before_its_id_is_answered(tmp_path: Path) -> None:
    state_file = tmp_path / "paper.json"
    with PaperBrokerServer(port=0, state_file=state_file) as server:
        kite = server.kite("durable")
        order_id = kite.place_order("regular", "NSE", "SBIN", "BUY", 1, "CNC", "LIMIT", price=700)
        assert saved_order_ids(state_file) == [order_id]
        assert state_file.stat().st_mode & 0o077 == 0  # it holds access tokens


def test_an_unreadable_state_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    state_file = tmp_path / "paper.json"
    state_file.write_text("{not json")
    with pytest.raises(StateFileError, match="move it away"):
        PaperBrokerServer(port=0, state_file=state_file).start()


def test_a_write_cut_off_by_a_crash_loses_only_its_own_line(tmp_path: Path) -> None:
    state_file = tmp_path / "paper.json"
    with PaperBrokerServer(port=0, state_file=state_file) as server:
        kite = server.kite("crash")
        order_id = kite.place_order("regular", "NSE", "SBIN", "BUY", 1, "CNC", "LIMIT", price=700)
        port, token = server.port, kite.access_token
    with state_file.open("a") as journal:
        journal.write('["order:99999",{"order_id":')
    with PaperBrokerServer(port=port, state_file=state_file) as server:
        same = KiteConnect("crash", access_token=token, root=server.url, timeout=2)
        assert [order["order_id"] for order in same.orders()] == [order_id]


def saved_order_ids(state_file: Path) -> list[str]:
    """Order ids in the state file's journal, each once, in the order first written."""
    lines = [json.loads(line) for line in state_file.read_text().splitlines()[1:]]
    return list(dict.fromkeys(value["order_id"] for key, value in lines if key.startswith("order:")))


def _console_command() -> str:
    command = Path(sys.executable).with_name("paper-broker")
    assert command.exists(), f"{command} is missing: install the project (make venv, or pip install -e .)"
    return str(command)


def test_the_console_command_serves_the_kite_client(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [_console_command(), "--host", "127.0.0.1", "--port", str(port), "--fill-delay", "0",
         "--state-file", str(tmp_path / "cli.json"), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert process.poll() is None, f"paper-broker exited: {process.communicate()[0]}"
            try:
                if httpx.get(f"{url}/_sim/health", timeout=1).json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "paper-broker did not answer within 15 s"
            time.sleep(0.05)

        kite = KiteConnect("cli_key", root=url, timeout=2)
        kite.generate_session(SimControl(url).request_token("cli_key"), api_secret="secret")
        order_id = kite.place_order("regular", "NSE", "TCS", "BUY", 2, "MIS", "MARKET", market_protection=-1)
        assert wait_for_status(kite, order_id, "COMPLETE")["filled_quantity"] == 2
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=STOP_SECONDS)
    # uvicorn shuts down gracefully, then re-raises SIGTERM: the usual exit status of a terminated process.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output
    assert f"Kite Connect v3 at {url}" in output
    assert saved_order_ids(tmp_path / "cli.json") == [order_id]


def test_the_console_command_explains_a_bad_state_file(tmp_path: Path) -> None:
    state_file = tmp_path / "bad.json"
    state_file.write_text("[]")
    finished = subprocess.run(
        [_console_command(), "--port", str(free_port()), "--state-file", str(state_file)],
        capture_output=True, text=True, timeout=START_SECONDS,
    )
    assert finished.returncode != 0
    assert "does not hold a paper broker state" in finished.stderr
