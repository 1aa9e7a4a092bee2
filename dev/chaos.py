"""Chaos run of the money path: many strategies trading through faults, kills and restarts, then the
broker's books checked against the store.

Everything runs on this machine and is its own: a private PostgreSQL cluster (initdb into a temporary
directory, restarted with `pg_ctl restart`), a Temporal dev server on its own SQLite file (stopped and
started again), the paper broker in its own process, and worker processes killed with SIGKILL. The
driver fires duplicate BUYs, SELL/SL_SELL races and operator exits while faults come and go: latency
beyond the client timeout, accept-then-timeout, dropped connections, 5xx, 429, order-book read faults,
partial fills. At the end it checks: no broker order unknown to the store, no twin left unflagged, every
strategy's position equal to its broker fills, nothing stuck; prints the counts; exits 1 on a mismatch.

    python -m dev.chaos [--strategies 50] [--cycles 2] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from kiteconnect import KiteConnect
from sqlalchemy import text
from temporalio.client import Client, WorkflowFailureError

from brokers.paper.control import SimControl
from dev.devserver import DevServer, free_port
from engine.errors import DuplicateOrderError
from engine.settings import Settings
from engine.temporal import data_converter, ended_order_result
from starter.orders import NothingToExit, OrderStarter
from store import Store
from store.records import StrategySpec

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ("RELIANCE", "INFY", "TCS", "SBIN", "HDFCBANK")
PAPER_SECRET = "paper-secret"
BROKER_TIMEOUT = 1.5


def pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise SystemExit(f"no PostgreSQL {name} under /usr/lib/postgresql: install postgresql")
    return str(found[-1])


class PrivatePostgres:
    """A PostgreSQL cluster of the run's own, so restarting it disturbs nobody else's."""

    def __init__(self, root: Path):
        self.dir = root / "pg"
        self.port = free_port()

    def _as_postgres(self, *args: str) -> None:
        runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*runner, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _options(self) -> str:
        return f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._as_postgres(pg_bin("initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self._as_postgres(pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-o", self._options(),
                          "-l", str(self.dir / "log"), "-w", "start")

    def restart(self) -> None:
        self._as_postgres(pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-o", self._options(), "-m", "fast",
                          "-w", "restart")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_postgres(pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"


@dataclass
class Tally:
    legs: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def line(self, counter: Counter[str]) -> str:
        return ", ".join(f"{key} {value}" for key, value in sorted(counter.items())) or "-"


MAX_PENDING_FAULTS = 3


class Chaos:
    def __init__(self, args: argparse.Namespace, root: Path):
        self.args = args
        self.root = root
        self.random = random.Random(args.seed)
        self.tally = Tally()
        self.pg = PrivatePostgres(root)
        self.temporal = DevServer(port=free_port(), db_file=str(root / "temporal.db"),
                                  log_file=str(root / "temporal.log"))
        self.paper_port = free_port()
        self.paper_url = f"http://127.0.0.1:{self.paper_port}"
        self.paper: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.secret_key = Fernet.generate_key().decode()
        self.task_queue = f"chaos-{uuid.uuid4().hex[:8]}"
        self.done = False

    # The stack.

    def worker_env(self) -> dict[str, str]:
        return {
            **os.environ, "TEMPORAL_ADDRESS": self.temporal.address, "TEMPORAL_NAMESPACE": "default",
            "DATABASE_URL": self.pg.url, "ENGINE_SECRET_KEY": self.secret_key, "ENGINE_KITE_ROOT": self.paper_url,
            "ENGINE_TASK_QUEUE": self.task_queue, "ENGINE_ENFORCE_MARKET_HOURS": "false",
            "ENGINE_BROKER_HTTP_TIMEOUT_SECONDS": str(BROKER_TIMEOUT), "ENGINE_ORDER_POLL_INTERVAL_SECONDS": "0.1",
            "ENGINE_ORDER_TIMEOUT_SECONDS": "4", "ENGINE_TWIN_WATCH_SECONDS": "15",
            "ENGINE_RESEND_QUIET_SECONDS_BUY": "4", "PYTHONUNBUFFERED": "1", "ENGINE_METRICS_PORT": "0",
            "ENGINE_TEMPORAL_METRICS_PORT": "0", "ENGINE_LOG_LEVEL": "WARNING",
        }

    def start_worker(self) -> None:
        log = (self.root / "workers.log").open("ab")
        self.workers.append(subprocess.Popen(
            [sys.executable, "worker.py"], cwd=ROOT, env=self.worker_env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        ))

    def kill_a_worker(self) -> None:
        alive = [worker for worker in self.workers if worker.poll() is None]
        if alive:
            victim = self.random.choice(alive)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            self.tally.faults["worker SIGKILL"] += 1
        self.start_worker()

    def start_paper_broker(self) -> None:
        log = (self.root / "paper.log").open("ab")
        self.paper = subprocess.Popen(
            [sys.executable, "-m", "dev.paper_broker", "--port", str(self.paper_port)], cwd=ROOT,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    async def start(self) -> None:
        self.pg.start()
        self.temporal.start()
        await self.temporal.wait_for_frontend()
        self.start_paper_broker()
        self.control = SimControl(self.paper_url)
        for _ in range(100):
            with contextlib.suppress(Exception):
                self.control.health()
                break
            await asyncio.sleep(0.1)
        self.store = await Store.connect(self.pg.url, self.secret_key, pool_size=10)
        await self.store.migrate()
        self.client = await Client.connect(self.temporal.address, data_converter=data_converter({}))
        self.settings = Settings(task_queue=self.task_queue, broker_http_timeout_seconds=BROKER_TIMEOUT,
                                 database_url=self.pg.url)
        self.starter = OrderStarter(self.client, self.store, self.settings)
        for _ in range(2):
            self.start_worker()

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        if self.paper is not None:
            self.paper.kill()
            self.paper.wait(10)
        self.temporal.stop()
        self.pg.stop()

    async def restart_temporal(self) -> None:
        self.temporal.stop()
        self.tally.faults["Temporal restart"] += 1
        self.temporal.start()  # the same port and SQLite file: history survives
        await self.temporal.wait_for_frontend()

    # Strategies.

    async def make_strategies(self) -> list[int]:
        ids: list[int] = []
        for account_number in range(max(1, self.args.strategies // 10)):
            api_key = f"chaos{account_number}"
            kite = KiteConnect(api_key, root=self.paper_url, timeout=5)
            request_token = SimControl(self.paper_url).request_token(api_key)
            token = kite.generate_session(request_token, api_secret=PAPER_SECRET)["access_token"]
            user, _ = await self.store.create_user(f"chaos-{account_number}-{uuid.uuid4().hex[:4]}")
            account = await self.store.add_broker_account(
                user.id, broker="kite", api_key=api_key, api_secret=PAPER_SECRET, access_token=token
            )
            for n in range(10):
                if len(ids) >= self.args.strategies:
                    break
                strategy = await self.store.create_strategy(StrategySpec(
                    user_id=user.id, broker_account_id=account.id, name=f"chaos-{len(ids)}",
                    symbol=SYMBOLS[n % len(SYMBOLS)], quantity=10, stop_loss_price=Decimal("1"),
                ))
                await self.store.set_strategy_status(strategy.id, "RUNNING")
                ids.append(strategy.id)
        return ids

    async def start_leg(self, kind: str, strategy_id: int) -> Any:
        """Start one order; retried while Temporal or the database is down. None when refused."""
        for _ in range(60):
            try:
                if kind == "BUY":
                    return await self.starter.place_buy_order(strategy_id, requested_by="chaos")
                if kind == "SELL":
                    return await self.starter.place_sell_order(strategy_id, requested_by="chaos")
                if kind == "SL_SELL":
                    return await self.starter.place_sl_sell_order(strategy_id, Decimal("1000"))
                return await self.starter.exit_position(strategy_id, requested_by="chaos")
            except (DuplicateOrderError, NothingToExit):
                self.tally.legs[f"{kind} refused as duplicate or flat"] += 1
                return None
            except Exception:  # Temporal or PostgreSQL restarting
                await asyncio.sleep(1)
        raise RuntimeError(f"could not start a {kind} of strategy {strategy_id}")

    async def outcome(self, handle: Any) -> None:
        for _ in range(120):
            try:
                result = await handle.result()
                self.tally.outcomes[result.outcome.value] += 1
                return
            except WorkflowFailureError as failed:
                ended = await ended_order_result(handle, failed)
                self.tally.outcomes[ended.outcome.value if ended else "FAILED"] += 1
                return
            except Exception:
                await asyncio.sleep(1)

    async def trade(self, strategy_id: int) -> None:
        await asyncio.sleep(self.random.random() * 5)
        for _ in range(self.args.cycles):
            buys = await asyncio.gather(*(self.start_leg("BUY", strategy_id) for _ in range(2)))
            for handle in filter(None, buys):
                self.tally.legs["BUY"] += 1
                await self.outcome(handle)
            exits = await asyncio.gather(self.start_leg("SELL", strategy_id), self.start_leg("SL_SELL", strategy_id))
            for handle in filter(None, exits):
                self.tally.legs["SELL or SL_SELL"] += 1
                await self.outcome(handle)
            for _ in range(4):  # what a partial exit left, sold by an operator's exit
                if await self.holding(strategy_id) <= 0:
                    break
                handle = await self.start_leg("EXIT", strategy_id)
                if handle is None:
                    await asyncio.sleep(2)
                    continue
                self.tally.legs["operator exit"] += 1
                await self.outcome(handle)
            await self.clear(strategy_id)

    async def holding(self, strategy_id: int) -> int:
        for _ in range(60):
            with contextlib.suppress(Exception):
                strategy = await self.store.get_strategy(strategy_id)
                return strategy.open_quantity
            await asyncio.sleep(1)
        return 0

    async def clear(self, strategy_id: int) -> None:
        """A person looked: the next entry may go (a doubled position stays flagged for the check)."""
        with contextlib.suppress(Exception):
            strategy = await self.store.get_strategy(strategy_id)
            if strategy.needs_intervention and "twin" not in (strategy.intervention_reason or ""):
                await self.store.clear_intervention(strategy_id, "chaos")

    # Faults.

    async def make_trouble(self) -> None:
        kinds = [
            ("latency past the client timeout", lambda: self.control.add_fault(
                "latency", route="place_order", count=1, seconds=BROKER_TIMEOUT + 1.0)),
            ("accept-then-timeout", lambda: self.control.add_fault(
                "accept_then_timeout", route="place_order", count=1, seconds=BROKER_TIMEOUT + 0.5)),
            ("drop after accept", lambda: self.control.add_fault(
                "drop_connection", route="place_order", count=1, after_accept=True)),
            ("drop before accept", lambda: self.control.add_fault(
                "drop_connection", route="place_order", count=1, after_accept=False)),
            ("HTTP 500", lambda: self.control.add_fault("http_500", route="place_order", count=1)),
            ("HTTP 503", lambda: self.control.add_fault("http_503", route="place_order", count=1)),
            ("HTTP 429", lambda: self.control.add_fault("http_429", route="place_order", count=2)),
            ("order-book 503", lambda: self.control.add_fault("http_503", route="orders", count=5)),
            ("partial fills", lambda: self.control.set_fill(fill_ratio="0.5")),
            ("whole fills", lambda: self.control.set_fill(fill_ratio="1")),
        ]
        started = time.monotonic()
        restarted_temporal = restarted_pg = not self.args.restarts
        # However short the run: a held request, an accepted one that times out, a killed worker.
        opening = [kinds[0], kinds[1], ("worker SIGKILL", self.kill_a_worker)]
        while not self.done:
            await asyncio.sleep(0.7)
            name, inject = opening.pop(0) if opening else self.random.choice(kinds)
            with contextlib.suppress(Exception):
                # Faults wait for a request to consume them: once few orders are left, unconsumed ones
                # would pile up and fail every request of the last order. A few pending at a time.
                if not opening and len(self.control.faults()) >= MAX_PENDING_FAULTS:
                    continue
                inject()
                if name != "worker SIGKILL":  # counted where it happens
                    self.tally.faults[name] += 1
            elapsed = time.monotonic() - started
            if self.random.random() < 0.06:
                self.kill_a_worker()
            if not restarted_pg and elapsed > 25:
                restarted_pg = True
                self.pg.restart()
                self.tally.faults["PostgreSQL restart"] += 1
            if not restarted_temporal and elapsed > 45:
                restarted_temporal = True
                await self.restart_temporal()

    # The check.

    async def settle(self) -> None:
        """Faults off; wait until no order or twin watch runs."""
        self.control.clear_faults()
        self.control.set_fill(fill_ratio="1")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = [e async for e in self.client.list_workflows(
                f'TaskQueue="{self.task_queue}" AND ExecutionStatus="Running"')]
            if not running:
                return
            await asyncio.sleep(2)

    async def check(self, strategy_ids: list[int]) -> list[str]:
        problems: list[str] = []
        broker = [o for o in self.control.orders() if o["order_id"] is not None and o["api_key"].startswith("chaos")]
        async with self.store.engine.connect() as connection:
            rows = (await connection.execute(text(
                "SELECT workflow_id, strategy_id, broker_order_id, transaction_type FROM orders "
                "WHERE broker_order_id IS NOT NULL"
            ))).all()
        known = {row.broker_order_id: row for row in rows}
        unknown = [o["order_id"] for o in broker if o["order_id"] not in known]
        if unknown:
            problems.append(f"broker orders unknown to the store: {unknown}")
        by_tag: dict[str, list[dict[str, Any]]] = {}
        for order in broker:
            by_tag.setdefault(order["tag"], []).append(order)
        twins = [orders for orders in by_tag.values() if len(orders) > 1]
        flagged = 0
        for orders in twins:
            twin_rows = [known[o["order_id"]] for o in orders if o["order_id"] in known]
            if not any("#twin:" in row.workflow_id for row in twin_rows):
                problems.append(f"twin orders {[o['order_id'] for o in orders]} not recorded as twins")
                continue
            strategy = await self.store.get_strategy(twin_rows[0].strategy_id)
            filled = [o for o in orders if o["filled_quantity"] > 0]
            if len(filled) > 1 and not (strategy.needs_intervention or "twin" in (strategy.last_action or "")):
                problems.append(f"filled twins {[o['order_id'] for o in orders]} not flagged")
            flagged += 1
        positions_ok = 0
        for strategy_id in strategy_ids:
            strategy = await self.store.get_strategy(strategy_id)
            net = 0
            for order in broker:
                row = known.get(order["order_id"])
                if row is not None and row.strategy_id == strategy_id:
                    net += order["filled_quantity"] * (1 if order["side"] == "BUY" else -1)
            if net != strategy.open_quantity:
                problems.append(f"strategy {strategy_id}: broker net {net}, store holds {strategy.open_quantity}")
            else:
                positions_ok += 1
            if strategy.active_order_workflow_id is not None:
                problems.append(f"strategy {strategy_id} still claimed by {strategy.active_order_workflow_id}")
        running = [e.id async for e in self.client.list_workflows(
            f'TaskQueue="{self.task_queue}" AND ExecutionStatus="Running"')]
        if running:
            problems.append(f"workflows still running: {running[:10]}")
        print(f"broker orders {len(broker)} (filled {sum(1 for o in broker if o['filled_quantity'])}), "
              f"twins {len(twins)} ({flagged} recorded), positions equal {positions_ok}/{len(strategy_ids)}, "
              f"still running {len(running)}")
        return problems

    async def run(self) -> int:
        began = time.monotonic()
        await self.start()
        strategy_ids = await self.make_strategies()
        trouble = asyncio.create_task(self.make_trouble())
        await asyncio.gather(*(self.trade(strategy_id) for strategy_id in strategy_ids))
        self.done = True
        await trouble
        await self.settle()
        problems = await self.check(strategy_ids)
        legs = sum(count for name, count in self.tally.legs.items() if "refused" not in name)
        print(f"order legs started {legs}: {self.tally.line(self.tally.legs)}")
        print(f"outcomes: {self.tally.line(self.tally.outcomes)}")
        print(f"faults: {self.tally.line(self.tally.faults)}")
        print(f"took {time.monotonic() - began:.0f}s")
        for problem in problems:
            print(f"MISMATCH: {problem}")
        print("chaos: OK" if not problems else f"chaos: {len(problems)} mismatches")
        return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-restarts", dest="restarts", action="store_false",
                        help="no PostgreSQL or Temporal restart (the short run inside the test suite)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    root.chmod(0o755)  # the private cluster runs as the postgres user, who must reach its directory
    chaos = Chaos(args, root)
    try:
        return asyncio.run(chaos.run())
    finally:
        chaos.stop()
        print(f"logs kept in {root}")


if __name__ == "__main__":
    sys.exit(main())
