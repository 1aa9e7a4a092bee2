"""Kite's ticker through the official `KiteTicker`, handed over to an asyncio loop; and the instruments dump.

`KiteTicker` runs on Twisted's reactor, once per process, on a daemon thread of its own. Each of its
callbacks does the least it can on that thread (note the arrival time) and passes the rest to the
asyncio loop with `call_soon_threadsafe`; calls the other way (subscribe, close) go to the reactor with
`callFromThread`. A connection is never retried by Twisted: when it closes, the owner opens a new one
with the account's current access token (tokens change every morning), after a backoff of its choosing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from kiteconnect import KiteConnect, KiteTicker

log = logging.getLogger(__name__)

ENGINE_KITE_TICKER_ROOT = "wss://ws.kite.trade"
KITE_INSTRUMENTS_ROOT = "https://api.kite.trade"
REACTOR_START_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10


class TickerListener(Protocol):
    """What a connection tells its owner, always on the owner's asyncio loop."""

    def ticker_connected(self, connection: TickerConnection) -> None: ...

    def ticker_ticks(self, connection: TickerConnection, ticks: list[dict[str, Any]], received_at: float) -> None: ...

    def ticker_closed(self, connection: TickerConnection, code: int | None, reason: str) -> None: ...


_reactor_lock = threading.Lock()


def ensure_reactor_running() -> Any:
    """Twisted's reactor, running on a daemon thread (started here unless something else did)."""
    from twisted.internet import reactor as twisted_reactor

    reactor: Any = twisted_reactor
    with _reactor_lock:
        if not reactor.running:
            thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                                      name="kite-ticker-reactor", daemon=True)
            thread.start()
            deadline = time.monotonic() + REACTOR_START_SECONDS
            while not reactor.running:
                if time.monotonic() > deadline:
                    raise RuntimeError("Twisted's reactor did not start for the Kite ticker")
                time.sleep(0.005)
    return reactor


class TickerConnection:
    """One `KiteTicker` WebSocket of one account, subscribed in LTP mode (the smallest packet)."""

    def __init__(self, key: Any, api_key: str, access_token: str, root: str,
                 loop: asyncio.AbstractEventLoop, listener: TickerListener):
        self.key = key  # the owner's name for it (an account id)
        self._loop = loop
        self._listener = listener
        self._ticker = KiteTicker(api_key, access_token, root=root, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        self._ticker.on_connect = self._on_connect
        self._ticker.on_ticks = self._on_ticks
        self._ticker.on_close = self._on_close
        self._ticker.on_error = self._on_error
        self._closed = False
        self._reactor: Any = None

    def __repr__(self) -> str:
        return f"TickerConnection({self.key!r})"  # never the token: it is in the ticker's URL

    def open(self) -> None:
        self._reactor = ensure_reactor_running()
        self._reactor.callFromThread(self._ticker.connect)

    def subscribe(self, tokens: list[int]) -> None:
        if tokens:
            self._reactor.callFromThread(self._subscribe_ltp, list(tokens))

    def unsubscribe(self, tokens: list[int]) -> None:
        if tokens:
            self._reactor.callFromThread(self._ticker.unsubscribe, list(tokens))

    def close(self) -> None:
        """Close for good (no retry); `ticker_closed` follows if it was open."""
        if self._reactor is not None:
            self._reactor.callFromThread(self._ticker.close)

    # ---- on the reactor's thread -------------------------------------------------------------

    def _subscribe_ltp(self, tokens: list[int]) -> None:
        self._ticker.subscribe(tokens)
        self._ticker.set_mode(self._ticker.MODE_LTP, tokens)

    def _on_connect(self, ticker: KiteTicker, response: Any) -> None:
        self._loop.call_soon_threadsafe(self._listener.ticker_connected, self)

    def _on_ticks(self, ticker: KiteTicker, ticks: list[dict[str, Any]]) -> None:
        self._loop.call_soon_threadsafe(self._listener.ticker_ticks, self, ticks, time.time())

    def _on_error(self, ticker: KiteTicker, code: Any, reason: Any) -> None:
        log.debug("ticker %s error %s: %s", self.key, code, reason)

    def _on_close(self, ticker: KiteTicker, code: Any, reason: Any) -> None:
        ticker.stop_retry()  # the owner reconnects, with a fresh token
        if self._closed:
            return
        self._closed = True
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason or "")
        self._loop.call_soon_threadsafe(self._listener.ticker_closed, self, code, text)

    def connection_failed(self, reason: str) -> None:
        """Called by the owner when no handshake completed in time: stop trying, report it closed."""
        if self._reactor is not None:
            self._reactor.callFromThread(self._ticker.stop_retry)
            self._reactor.callFromThread(self._ticker._close)
        if not self._closed:
            self._closed = True
            self._listener.ticker_closed(self, None, reason)


def ticker_root_for(kite_root: str | None) -> str:
    """Kite's ticker, or a Kite-compatible server's (the paper broker's) at the REST root's host."""
    if not kite_root:
        return ENGINE_KITE_TICKER_ROOT
    return kite_root.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/")


@dataclass(frozen=True)
class InstrumentRow:
    exchange: str
    tradingsymbol: str
    instrument_token: int


def fetch_instruments(api_key: str, access_token: str, root: str | None, timeout: float = 30.0) -> list[InstrumentRow]:
    """Kite's daily instruments dump through the client's own `instruments()` (`GET /instruments`, CSV).
    Blocking: call it in a thread."""
    kite = KiteConnect(api_key, access_token=access_token, root=root or KITE_INSTRUMENTS_ROOT, timeout=timeout)
    try:
        dump = kite.instruments()
    except Exception as error:  # the client's message never holds the token; its chained request might
        raise InstrumentsUnavailable(f"the instruments dump could not be fetched: {type(error).__name__}: "
                                     f"{error}") from None
    rows = [InstrumentRow(row["exchange"], row["tradingsymbol"], int(row["instrument_token"]))
            for row in dump if row.get("exchange") and row.get("tradingsymbol") and row.get("instrument_token")]
    if not rows:
        raise InstrumentsUnavailable("the instruments dump held no rows with exchange, tradingsymbol and token")
    return rows


class InstrumentsUnavailable(Exception):
    """Kite's instruments dump could not be read; retrying later can help."""

    retryable = True
