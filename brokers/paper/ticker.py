"""Kite's ticker WebSocket: binary ticks per subscribed instrument, order updates as text, heartbeats.

Framed as Kite frames them, so `kiteconnect.KiteTicker`'s own parser (`_parse_binary`) reads them
unchanged: a frame is a 2-byte packet count, then per packet a 2-byte length and the packet; integers
big-endian, prices in paise. Packets: ltp 8 bytes, quote 44, full 184 (with five levels of depth a
side). A 1-byte frame is a heartbeat, sent each second nothing else was.

The exchange calls `prices_moved` and `order_changed` on the event loop; each connection has its own
queue and sender, so a slow client holds up no one else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from brokers.paper import render
from brokers.paper.accounts import Account
from brokers.paper.connections import TRANSPORTS_KEY
from brokers.paper.errors import TokenError
from brokers.paper.exchange import PaperExchange
from brokers.paper.market import Quote
from brokers.paper.orders import Order

log = logging.getLogger(__name__)

MODE_LTP, MODE_QUOTE, MODE_FULL = "ltp", "quote", "full"
MODES = (MODE_LTP, MODE_QUOTE, MODE_FULL)
HEARTBEAT = b"\x00"
HEARTBEAT_SECONDS = 1.0
# Kite's limits: connections per api_key, instruments per connection.
MAX_CONNECTIONS_PER_API_KEY = 3
MAX_INSTRUMENTS_PER_CONNECTION = 3000
# A policy-violation close, as the client's on_close sees it.
CLOSE_POLICY = 1008
DEPTH_LEVELS = 5


def _paise(price: Decimal) -> int:
    return int((price * 100).to_integral_value())


def _epoch(quote: Quote, which: str) -> int:
    moment = quote.last_trade_time if which == "trade" and quote.last_trade_time else quote.updated_at
    return int(moment.timestamp())


def ltp_packet(quote: Quote) -> bytes:
    return struct.pack(">II", quote.instrument.instrument_token, _paise(quote.last_price))


def quote_packet(quote: Quote) -> bytes:
    return struct.pack(
        ">11I", quote.instrument.instrument_token, _paise(quote.last_price), quote.last_quantity,
        _paise(quote.last_price), quote.volume, 0, 0,
        _paise(quote.open), _paise(quote.high), _paise(quote.low), _paise(quote.close),
    )


def full_packet(quote: Quote) -> bytes:
    tick = quote.instrument.tick_size
    head = quote_packet(quote) + struct.pack(">5I", _epoch(quote, "trade"), 0, 0, 0, _epoch(quote, "update"))
    # An empty book a tick either side of the last price, as `GET /quote` shows it: buys, then sells.
    levels = [quote.last_price - tick * (level + 1) for level in range(DEPTH_LEVELS)]
    levels += [quote.last_price + tick * (level + 1) for level in range(DEPTH_LEVELS)]
    depth = b"".join(struct.pack(">IIHxx", 0, _paise(max(price, Decimal(0))), 0) for price in levels)
    return head + depth


PACKERS = {MODE_LTP: ltp_packet, MODE_QUOTE: quote_packet, MODE_FULL: full_packet}


def tick_frame(packets: Iterable[bytes]) -> bytes:
    packets = list(packets)
    return struct.pack(">H", len(packets)) + b"".join(struct.pack(">H", len(p)) + p for p in packets)


@dataclass(eq=False)
class TickerConnection:
    websocket: WebSocket
    account: Account
    modes: dict[int, str] = field(default_factory=dict)  # instrument token -> mode
    outbox: asyncio.Queue[bytes | str | None] = field(default_factory=asyncio.Queue)
    sent_ticks: int = 0
    sent_orders: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"api_key": self.account.api_key, "user_id": self.account.user_id,
                "modes": {str(token): mode for token, mode in sorted(self.modes.items())},
                "ticks_sent": self.sent_ticks, "order_updates_sent": self.sent_orders}


class TickerHub:
    def __init__(self, exchange: PaperExchange):
        self.exchange = exchange
        self.connections: list[TickerConnection] = []
        market = exchange.market
        self._by_token = {quote.instrument.instrument_token: key for key in market.keys if (quote := market.quote(key))}
        self._sent_history: dict[str, int] = {}

    # ---- from the exchange ----------------------------------------------------------------------

    def prices_moved(self, keys: Iterable[str]) -> None:
        """Send a tick of each moved instrument to every connection subscribed to it, in its mode."""
        if not self.connections:
            return
        quotes = [quote for key in keys if (quote := self.exchange.market.quote(key)) is not None]
        for connection in self.connections:
            packets = [PACKERS[mode](quote) for quote in quotes
                       if (mode := connection.modes.get(quote.instrument.instrument_token)) is not None]
            if packets:
                connection.outbox.put_nowait(tick_frame(packets))

    def order_changed(self, order: Order) -> None:
        """An order update, as Kite's `{"type": "order", "data": {...}}`, to the account's connections."""
        if self._sent_history.get(order.order_id) == len(order.history):
            return
        self._sent_history[order.order_id] = len(order.history)
        listeners = [c for c in self.connections if c.account.api_key == order.api_key]
        if not listeners:
            return
        state = order.state
        data = {**render.order_json(order), "user_id": order.placed_by,
                "unfilled_quantity": state.quantity - state.filled_quantity}
        message = render.json_bytes({"type": "order", "id": "", "data": data}).decode()
        for connection in listeners:
            connection.outbox.put_nowait(message)

    def reset(self) -> None:
        """After a reset the connections' tokens are gone: cut them, as Kite ends a session's sockets."""
        self._sent_history.clear()
        self.drop()

    # ---- the control API --------------------------------------------------------------------------

    def drop(self, api_key: str | None = None) -> int:
        """Cut the TCP connections (no close frame), as a network fault would: the client must reconnect."""
        dropped = 0
        for connection in list(self.connections):
            if api_key is not None and connection.account.api_key != api_key:
                continue
            transport = _transport_of(connection.websocket)
            if transport is not None:
                transport.abort()
                dropped += 1
        return dropped

    # ---- serving one connection -------------------------------------------------------------------

    async def serve(self, websocket: WebSocket) -> None:
        api_key = websocket.query_params.get("api_key", "")
        try:
            account = self.exchange.authenticate(api_key, websocket.query_params.get("access_token", ""))
        except TokenError:
            await websocket.close(code=CLOSE_POLICY)  # before the handshake: the client sees HTTP 403
            return
        await websocket.accept()
        if sum(1 for c in self.connections if c.account.api_key == api_key) >= MAX_CONNECTIONS_PER_API_KEY:
            await websocket.send_text(json.dumps({"type": "error", "data": (
                f"Maximum of {MAX_CONNECTIONS_PER_API_KEY} WebSocket connections per api_key exceeded.")}))
            await websocket.close(code=CLOSE_POLICY)
            return
        connection = TickerConnection(websocket, account)
        self.connections.append(connection)
        sender = asyncio.get_running_loop().create_task(self._send(connection))
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", errors="replace")
                self._handle(connection, text)
        except WebSocketDisconnect:
            pass
        finally:
            self.connections.remove(connection)
            connection.outbox.put_nowait(None)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            client = websocket.scope.get("client")
            transports = websocket.scope.get("state", {}).get(TRANSPORTS_KEY)
            if transports is not None and client:
                transports.pop(tuple(client), None)

    def _handle(self, connection: TickerConnection, text: str) -> None:
        """`{"a": "subscribe"|"unsubscribe", "v": [tokens]}` or `{"a": "mode", "v": [mode, [tokens]]}`."""
        try:
            request = json.loads(text)
            action, value = request["a"], request["v"]
        except (ValueError, KeyError, TypeError):
            self._error(connection, f"Unreadable message {text[:100]!r}: send {{\"a\": action, \"v\": value}}.")
            return
        if action == "subscribe" and _tokens(value) is not None:
            tokens = [token for token in _tokens(value) or [] if token not in connection.modes]
            if len(connection.modes) + len(tokens) > MAX_INSTRUMENTS_PER_CONNECTION:
                self._error(connection, f"Maximum of {MAX_INSTRUMENTS_PER_CONNECTION} instruments per connection.")
                return
            for token in tokens:
                connection.modes[token] = MODE_QUOTE  # Kite's default mode
            self._snapshot(connection, tokens)
        elif action == "unsubscribe" and _tokens(value) is not None:
            for token in _tokens(value) or []:
                connection.modes.pop(token, None)
        elif action == "mode" and isinstance(value, list) and len(value) == 2 and value[0] in MODES \
                and _tokens(value[1]) is not None:
            mode, tokens = value[0], [token for token in _tokens(value[1]) or [] if token in connection.modes]
            for token in tokens:
                connection.modes[token] = mode
            self._snapshot(connection, tokens)
        else:
            self._error(connection, f"Unknown request {text[:100]!r}: use subscribe, unsubscribe or mode "
                                    f"({', '.join(MODES)}) with instrument tokens.")

    def _snapshot(self, connection: TickerConnection, tokens: list[int]) -> None:
        """The current tick of newly subscribed (or re-moded) instruments, so a client need not wait for a move."""
        packets = [PACKERS[connection.modes[token]](quote) for token in tokens
                   if (key := self._by_token.get(token)) and (quote := self.exchange.market.quote(key))]
        if packets:
            connection.outbox.put_nowait(tick_frame(packets))

    def _error(self, connection: TickerConnection, message: str) -> None:
        connection.outbox.put_nowait(json.dumps({"type": "error", "data": message}))

    async def _send(self, connection: TickerConnection) -> None:
        websocket = connection.websocket
        try:
            while True:
                try:
                    message = await asyncio.wait_for(connection.outbox.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    message = HEARTBEAT
                if message is None or websocket.application_state != WebSocketState.CONNECTED:
                    return
                if isinstance(message, str):
                    await websocket.send_text(message)
                    connection.sent_orders += message.startswith('{"type":"order"')
                else:
                    await websocket.send_bytes(message)
                    connection.sent_ticks += message != HEARTBEAT
        except (WebSocketDisconnect, RuntimeError, OSError) as error:
            log.debug("ticker connection of %s closed while sending: %s", connection.account.api_key, error)


def _tokens(value: Any) -> list[int] | None:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return None
    return value


def _transport_of(websocket: WebSocket) -> asyncio.Transport | None:
    transports = websocket.scope.get("state", {}).get(TRANSPORTS_KEY)
    client = websocket.scope.get("client")
    if transports is None or not client:
        return None
    transport: asyncio.Transport | None = transports.get(tuple(client))
    return transport
