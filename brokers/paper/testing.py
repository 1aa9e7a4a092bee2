"""The paper broker inside this process (tests, the demo): uvicorn on a background thread.

    with PaperBrokerServer(port=0) as server:
        server.control.set_price("INFY", "1500")
        kite = server.kite("api_key_1")          # a logged-in kiteconnect.KiteConnect
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn
from kiteconnect import KiteConnect

from brokers.paper.app import create_app, serve_config
from brokers.paper.control import SimControl
from brokers.paper.simulator import PaperBrokerConfig

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
# Any secret works unless the server was given one: the checksum only has to be well formed.
DEFAULT_API_SECRET = "paper-secret"


class PaperBrokerError(RuntimeError):
    """The in-process paper broker could not start or stop."""


class PaperBrokerServer:
    def __init__(
        self,
        port: int = 0,
        state_file: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        config: PaperBrokerConfig | None = None,
        log_level: str = "warning",
        **settings: Any,
    ):
        """`settings` override fields of `PaperBrokerConfig` (fill, cash, token_lifetime_seconds, ...)."""
        config = replace(config or PaperBrokerConfig(), **settings)
        if state_file is not None:
            config = replace(config, state_file=Path(state_file))
        self.config = config
        self.host = host
        self.port = port
        self.log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._control: SimControl | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def control(self) -> SimControl:
        if self._control is None:
            raise PaperBrokerError("the paper broker is not running: call start() first")
        return self._control

    def start(self) -> PaperBrokerServer:
        if self._server is not None:
            raise PaperBrokerError(f"the paper broker is already running at {self.url}")
        app = create_app(self.config)  # reads the state file: fails before anything listens
        # IPPROTO_TCP, not 0: asyncio turns Nagle off only for sockets that say they are TCP.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.port))
        except OSError as error:
            listener.close()
            raise PaperBrokerError(f"cannot listen on {self.host}:{self.port}: {error}") from error
        # Port 0 asks the OS for a free one; later restarts reuse it, so the URL stays the same.
        self.port = listener.getsockname()[1]
        server = uvicorn.Server(serve_config(app, self.host, self.port, log_level=self.log_level))
        thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[listener])),
                                  name=f"paper-broker-{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                listener.close()
                raise PaperBrokerError(f"the paper broker did not start on {self.url}; see its log")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        self._control = SimControl(self.url)
        return self

    def stop(self) -> None:
        server, thread, control = self._server, self._thread, self._control
        self._server = self._thread = self._control = None
        if control is not None:
            control.close()
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(STOP_TIMEOUT_SECONDS)
        if thread.is_alive():
            raise PaperBrokerError(f"the paper broker on {self.url} did not stop within {STOP_TIMEOUT_SECONDS} s")

    def __enter__(self) -> PaperBrokerServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def login(self, api_key: str, *, api_secret: str | None = None) -> str:
        """Log in with the real kiteconnect client; returns the access token."""
        return self._login(api_key, api_secret, timeout=START_TIMEOUT_SECONDS).access_token

    def kite(self, api_key: str, *, timeout: float = 2.0, api_secret: str | None = None) -> KiteConnect:
        """A kiteconnect client logged in to `api_key`'s account, with `timeout` seconds per call."""
        return self._login(api_key, api_secret, timeout=timeout)

    def _login(self, api_key: str, api_secret: str | None, *, timeout: float) -> KiteConnect:
        client = KiteConnect(api_key, root=self.url, timeout=timeout)
        secret = api_secret or self.config.api_secret or DEFAULT_API_SECRET
        client.generate_session(self.control.request_token(api_key), api_secret=secret)
        return client
