"""The paper broker's whole state: the exchange, faults, the request log, the rate limiter, the
random walk and the state file, with the configuration they started from."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from brokers.paper.accounts import DEFAULT_CASH
from brokers.paper.errors import ControlInputError
from brokers.paper.exchange import ExchangeSettings, PaperExchange
from brokers.paper.faults import FaultBook
from brokers.paper.orders import FillSettings
from brokers.paper.persistence import StateFile, StateFileError, all_keys, record_for, restore
from brokers.paper.request_log import RateLimiter, RateLimits, RequestLog
from brokers.paper.ticker import TickerHub


@dataclass(frozen=True)
class RandomWalkSettings:
    enabled: bool = False
    interval_seconds: float = 0.5
    # Standard deviation of one step, relative to the price.
    volatility: float = 0.001
    # EXCHANGE:SYMBOL keys to move; None moves every instrument.
    symbols: tuple[str, ...] | None = None
    seed: int | None = None


@dataclass(frozen=True)
class PaperBrokerConfig:
    fill: FillSettings = field(default_factory=FillSettings)
    cash: Decimal = DEFAULT_CASH
    # None: access tokens live until 06:00 IST the next day, like Kite's.
    token_lifetime_seconds: float | None = None
    api_secret: str | None = field(default=None, repr=False)
    # Kite's request limits per account (0 turns one off); `RateLimits.off()` for none.
    rate_limits: RateLimits = field(default_factory=RateLimits)
    # Refuse orders (but AMOs) outside 09:15-15:30 IST on weekdays, by the simulated clock.
    market_hours: bool = False
    state_file: Path | None = None
    random_walk: RandomWalkSettings = field(default_factory=RandomWalkSettings)


class Simulator:
    def __init__(self, config: PaperBrokerConfig):
        self.config = config
        self.exchange = PaperExchange(
            ExchangeSettings(fill=config.fill, cash=config.cash,
                             token_lifetime_seconds=config.token_lifetime_seconds, api_secret=config.api_secret,
                             market_hours=config.market_hours),
            on_change=self.changed,
        )
        self.ticker = TickerHub(self.exchange)
        self.exchange.on_quotes = self.ticker.prices_moved
        self.faults = FaultBook()
        self.requests = RequestLog()
        self.limiter = RateLimiter(config.rate_limits, today=lambda: self.exchange.clock.now().date())
        self.random_walk = config.random_walk
        self._walker: asyncio.Task[None] | None = None
        self.state_file: StateFile | None = None
        if config.state_file is not None:
            self.state_file = StateFile(
                config.state_file,
                record_for=lambda key: record_for(key, self.exchange, self.requests),
                all_keys=lambda: all_keys(self.exchange, self.requests),
            )
            saved = self.state_file.read()
            if saved is not None:
                restore(saved, self.exchange, self.requests)
            try:
                self.state_file.rewrite_now()
            except OSError as error:
                raise StateFileError(f"cannot write the state file {config.state_file}: {error}") from None

    async def start(self) -> None:
        self.exchange.attach(asyncio.get_running_loop())
        self._restart_walker()

    async def stop(self) -> None:
        await self._stop_walker()
        self.exchange.detach()
        await self.durable()

    def reset(self) -> None:
        """Forget all orders, accounts, tokens, requests and faults; defaults for prices and fills."""
        self.exchange.reset()
        self.ticker.reset()
        self.faults.clear()
        self.requests.clear()
        self.limiter.clear()
        self.limiter.limits = self.config.rate_limits
        self.random_walk = self.config.random_walk
        self._restart_walker()

    async def durable(self) -> None:
        """Wait until the state file holds every change made so far (no-op without a file)."""
        if self.state_file is not None:
            await self.state_file.flush()

    def set_random_walk(self, settings: RandomWalkSettings) -> None:
        unknown = [key for key in settings.symbols or () if self.exchange.market.quote(key) is None]
        if unknown:
            raise ControlInputError(f"unknown instruments {', '.join(unknown)}: use EXCHANGE:TRADINGSYMBOL keys")
        self.random_walk = settings
        self._restart_walker()

    def changed(self, key: str) -> None:
        """Note that the state under `key` changed, for the state file (no-op without one)."""
        if self.state_file is not None:
            self.state_file.mark_changed(key)
        kind, _, order_id = key.partition(":")
        if kind == "order" and (order := self.exchange.orders.get(order_id)) is not None:
            self.ticker.order_changed(order)

    def _restart_walker(self) -> None:
        if self._walker is not None:
            self._walker.cancel()
            self._walker = None
        if self.random_walk.enabled:
            self._walker = asyncio.get_running_loop().create_task(self._walk(self.random_walk))

    async def _stop_walker(self) -> None:
        walker, self._walker = self._walker, None
        if walker is not None:
            walker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await walker

    async def _walk(self, settings: RandomWalkSettings) -> None:
        rng = random.Random(settings.seed)
        market = self.exchange.market
        keys = list(settings.symbols) if settings.symbols else market.keys
        while True:
            await asyncio.sleep(settings.interval_seconds)
            self.exchange.reprice(market.random_step(rng, settings.volatility, keys))
