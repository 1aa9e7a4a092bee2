"""The stop-loss listener: turns price ticks into SL_SELL orders through the ordinary entry point.

A tick at or below a long strategy's stop-loss price starts `place_sl_sell_order`. Ticks repeat, so
the same stop-loss fires many times: the order workflow's id turns every repeat into a refused duplicate,
and the listener just notes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal

from engine.errors import DuplicateOrderError
from starter.orders import OrderHandle, OrderStarter
from store import Store
from store.records import StrategyRecord

log = logging.getLogger(__name__)

# Kite's quote routes allow 1 request a second; the margin absorbs jitter on the way to the broker.
QUOTE_SPACING_SECONDS = 1.1


def stop_loss_level(strategy: StrategyRecord) -> Decimal | None:
    """The price at or below which a long position must be sold, from the absolute or % setting."""
    if strategy.stop_loss_price is not None:
        return strategy.stop_loss_price
    if strategy.stop_loss_pct is not None and strategy.entry_price is not None:
        return strategy.entry_price * (1 - strategy.stop_loss_pct / 100)
    return None


class StopLossListener:
    def __init__(self, store: Store, starter: OrderStarter):
        self.store = store
        self.starter = starter

    async def on_tick(self, symbol: str, price: Decimal, exchange: str = "NSE") -> list[OrderHandle]:
        """Start an SL_SELL for every running long strategy on `symbol` whose stop-loss the price hit."""
        started = []
        for strategy in await self.store.list_strategies(status="RUNNING"):
            if strategy.symbol != symbol or strategy.exchange != exchange or strategy.open_quantity <= 0:
                continue
            level = stop_loss_level(strategy)
            if level is None or price > level:
                continue
            try:
                started.append(await self.starter.place_sl_sell_order(strategy, price))
                log.info("stop-loss of strategy %s hit at %s (level %s)", strategy.id, price, level)
            except DuplicateOrderError as duplicate:
                log.debug("stop-loss of strategy %s already handled: %s", strategy.id, duplicate)
        return started

    async def follow_prices(
        self,
        symbols: list[str],
        last_price: Callable[[str], Awaitable[Decimal]],
        interval_seconds: float = 0.5,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Poll last prices and feed them to `on_tick` until `stop` is set.

        Kite answers at most one quote request a second: calls are spaced by that, whatever `interval_seconds`.
        """
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        last_call: float | None = None
        while not stop.is_set():
            for symbol in symbols:
                wait = 0.0 if last_call is None else last_call + QUOTE_SPACING_SECONDS - loop.time()
                if wait > 0 and await _stopped_within(stop, wait):
                    return
                last_call = loop.time()
                try:
                    await self.on_tick(symbol, await last_price(symbol))
                except Exception:  # a bad tick must not stop the listener
                    log.exception("stop-loss check for %s failed", symbol)
            try:
                await asyncio.wait_for(stop.wait(), interval_seconds)
            except TimeoutError:
                pass


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
