"""The market-data service: Kite's ticker in, SL_SELL orders out, through the ordinary entry point.

- One ticker connection per broker account (Kite allows 3 per api_key), opened with the account's
  current access token, re-read from the store before every (re)connect: tokens change each morning.
- It subscribes, in LTP mode, to the instruments of every RUNNING strategy holding a position with a
  stop-loss; instrument tokens come from Kite's instruments dump, fetched once a day (`InstrumentTokens`).
- A tick costs a lookup in the in-memory `StopIndex`, never a database read. A crossed stop starts
  `OrderStarter.place_sl_sell_order` once, with the tick's price and arrival time; the order workflow's
  id refuses any repeat anyway.
- It learns of positions opened and closed (order_events) and of stop-loss and status changes
  (strategy_events) by following both tables by id, and reloads in full at start and after a reconnect.
- Health: per account, connected or not, instruments subscribed, age of the last tick; one alert when
  ticks stop during market hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from engine.errors import DuplicateOrderError
from engine.market_hours import IST
from engine.models import RETRYABLE_OUTCOMES, Outcome
from starter.orders import OrderStarter
from starter.stop_losses import Stop, StopIndex, watched
from store import Store
from store.records import OrderEventType, StrategyChange, StrategyRecord

log = logging.getLogger(__name__)

# After a failed start (not a duplicate: e.g. Temporal unreachable) the stop is armed again this much later.
RETRY_FIRE_SECONDS = 1.0
# A ticker connection that completes no handshake within this is given up and opened again.
CONNECT_WAIT_SECONDS = 15.0
FIRST_BACKOFF_SECONDS = 0.5
# A connection that stayed up this long resets the backoff.
STABLE_CONNECTION_SECONDS = 30.0
# An id missing from a followed table (a transaction not yet committed) is waited for this long.
GAP_GRACE_SECONDS = 5.0
MAX_TRACKED_GAPS = 1000
CHANGES_PER_READ = 500


class IdCursor:
    """Follows a table by id when ids can commit out of order (PostgreSQL sequences): an id missing
    below a seen one is waited for (`grace`), so a late commit is not skipped."""

    def __init__(self, start: int = 0, grace: float = GAP_GRACE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.position = start  # every id at or below it is handled, or its gap was given up
        self._seen: set[int] = set()
        self._gaps: dict[int, float] = {}
        self._grace = grace
        self._clock = clock

    def reset(self, position: int) -> None:
        self.position = position
        self._seen.clear()
        self._gaps.clear()

    def unseen(self, ids: Iterable[int]) -> list[int]:
        return [i for i in ids if i > self.position and i not in self._seen]

    def advance(self, ids: Iterable[int]) -> None:
        now = self._clock()
        self._seen.update(i for i in ids if i > self.position)
        if self._seen:
            top = max(self._seen)
            missing = [i for i in range(self.position + 1, top) if i not in self._seen and i not in self._gaps]
            for i in missing[:MAX_TRACKED_GAPS]:
                self._gaps[i] = now + self._grace
            for i in missing[MAX_TRACKED_GAPS:]:
                self._seen.add(i)  # too many holes to wait for: give them up at once
        while True:
            following = self.position + 1
            if following in self._seen:
                self._seen.discard(following)
            elif following in self._gaps and self._gaps[following] <= now:
                del self._gaps[following]
            else:
                break
            self.position = following


class InstrumentTokens:
    """`EXCHANGE:TRADINGSYMBOL` → instrument token, from Kite's instruments dump, fetched once per IST
    day and kept in a file: a restarted service (compose restarts it on failure) does not fetch the
    ~100k-row dump again, and the store holds nothing that only this process reads."""

    def __init__(self, cache_dir: Path, fetch: Callable[[], Awaitable[dict[str, int]]],
                 today: Callable[[], str] = lambda: datetime.now(IST).date().isoformat()):
        self.cache_dir = Path(cache_dir)
        self._fetch = fetch
        self._today = today
        self._day: str | None = None
        self._tokens: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def tokens(self) -> dict[str, int]:
        day = self._today()
        if self._day == day:
            return self._tokens
        async with self._lock:
            if self._day != day:
                self._tokens = await self._load(day)
                self._day = day
        return self._tokens

    async def token_of(self, exchange: str, symbol: str) -> int | None:
        return (await self.tokens()).get(f"{exchange}:{symbol}")

    async def _load(self, day: str) -> dict[str, int]:
        path = self.cache_dir / f"instruments-{day}.json"
        cached = await asyncio.to_thread(_read_tokens, path)
        if cached:
            return cached
        tokens = await self._fetch()
        try:
            await asyncio.to_thread(_write_tokens, path, tokens)
        except OSError as error:  # a read-only disk costs a fetch at the next start, nothing more
            log.warning("instruments dump of %s fetched (%d instruments) but not cached in %s: %s", day,
                        len(tokens), path, error)
        else:
            log.info("instruments dump of %s fetched: %d instruments, cached in %s", day, len(tokens), path)
        return tokens


def _read_tokens(path: Path) -> dict[str, int] | None:
    try:
        tokens = json.loads(path.read_text())
    except (ValueError, OSError):
        return None
    return {str(k): int(v) for k, v in tokens.items()} if isinstance(tokens, dict) and tokens else None


def _write_tokens(path: Path, tokens: dict[str, int]) -> None:
    """The day's file, written whole (then renamed), and the days before removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(tokens, separators=(",", ":")))
    partial.replace(path)
    for old in path.parent.glob("instruments-*.json"):
        if old != path:
            old.unlink(missing_ok=True)


class Connection(Protocol):
    key: Any

    def open(self) -> None: ...

    def subscribe(self, tokens: list[int]) -> None: ...

    def unsubscribe(self, tokens: list[int]) -> None: ...

    def close(self) -> None: ...

    def connection_failed(self, reason: str) -> None: ...


# (account id, api key, access token, listener) -> an unopened connection.
ConnectionFactory = Callable[[int, str, str, Any], Connection]
# (title, message) -> delivered (logged; the webhook when configured).
AlertSender = Callable[[str, str], Awaitable[None]]


@dataclass
class AccountFeed:
    """One account's ticker connection and what the service knows of it."""

    account_id: int
    connection: Connection | None = None
    connected: bool = False
    connected_at: float | None = None
    subscribed: set[int] = field(default_factory=set)
    last_tick_at: float | None = None
    ticks: int = 0
    connects: int = 0
    stale_alerted: bool = False
    last_problem: str | None = None
    created_at: float = field(default_factory=time.time)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def health(self, now: float) -> dict[str, Any]:
        age = None if self.last_tick_at is None else round(now - self.last_tick_at, 3)
        return {"account_id": self.account_id, "connected": self.connected, "subscribed": len(self.subscribed),
                "last_tick_age_seconds": age, "ticks": self.ticks, "connects": self.connects,
                "problem": self.last_problem}

    def health_line(self, now: float) -> str:
        state = self.health(now)
        tick_age = state["last_tick_age_seconds"]
        age = "no tick yet" if tick_age is None else f"last tick {tick_age:.1f}s ago"
        line = (f"account {self.account_id}: {'connected' if self.connected else 'DISCONNECTED'}, "
                f"{state['subscribed']} instruments subscribed, {age}, {self.ticks} ticks, {self.connects} connects")
        return line + (f" ({self.last_problem})" if self.last_problem and not self.connected else "")


@dataclass
class ServiceCounts:
    ticks: int = 0
    stops_crossed: int = 0
    sl_sell_started: int = 0
    sl_sell_duplicates: int = 0
    sl_sell_failures: int = 0
    reloads: int = 0
    untracked_symbols: int = 0
    stale_alerts: int = 0


class MarketDataService:
    def __init__(
        self,
        store: Store,
        starter: OrderStarter,
        instruments: InstrumentTokens,
        connect: ConnectionFactory,
        *,
        poll_seconds: float = 0.25,
        reconnect_max_seconds: float = 30.0,
        stale_seconds: float = 60.0,
        market_open: Callable[[datetime], bool] = lambda moment: True,
        alert: AlertSender | None = None,
        on_started: Callable[[Stop, float], None] | None = None,
    ):
        self.store = store
        self.starter = starter
        self.instruments = instruments
        self.index = StopIndex()
        self.counts = ServiceCounts()
        self.feeds: dict[int, AccountFeed] = {}
        self._connect = connect
        self._poll_seconds = poll_seconds
        self._reconnect_max = reconnect_max_seconds
        self._stale_seconds = stale_seconds
        self._market_open = market_open
        self._alert = alert
        self._on_started = on_started
        self._records: dict[int, StrategyRecord] = {}
        self._orders_cursor = IdCursor()
        self._strategies_cursor = IdCursor()
        self._reload_wanted = True
        self._wake = asyncio.Event()
        self._fires: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.loaded = asyncio.Event()  # set after the first full reload

    # ---- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the store and the tickers until `stop` is set; then close every connection."""
        self._loop = asyncio.get_running_loop()
        watchdog = asyncio.create_task(self._watch_staleness(stop))
        try:
            while not stop.is_set():
                try:
                    if self._reload_wanted:
                        await self.reload()
                    else:
                        await self.follow_changes()
                except Exception:  # the store may be away for a moment; the stops in memory keep working
                    log.exception("market data: reading the store failed; retrying")
                    await _wait(stop, 1.0)
                    continue
                self._wake.clear()
                waiter = asyncio.create_task(self._wake.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, timeout=self._poll_seconds, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
        finally:
            self._stopping = True
            watchdog.cancel()
            for feed in self.feeds.values():
                if feed.task is not None:
                    feed.task.cancel()
                if feed.connection is not None:
                    feed.connection.close()
            tasks = [t for t in [watchdog, *self._fires, *(f.task for f in self.feeds.values())] if t is not None]
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def request_reload(self) -> None:
        self._reload_wanted = True
        self._wake.set()

    async def reload(self) -> None:
        """Every watched stop from the store, from scratch; the cursors restart at the newest events."""
        self._reload_wanted = False
        order_id, strategy_id = await self.store.last_change_ids()
        strategies = await self.store.open_positions_with_stop_loss()
        armed = [(strategy, token) for strategy in strategies if (token := await self._token_of(strategy)) is not None]
        self._records = {strategy.id: strategy for strategy, _ in armed}
        self.index.replace_all(armed)
        self._orders_cursor.reset(order_id)
        self._strategies_cursor.reset(strategy_id)
        self.counts.reloads += 1
        log.info("market data: %d stop-losses armed over %d instruments", len(self.index),
                 len(self.index.instrument_tokens()))
        self._sync_feeds()
        self.loaded.set()

    async def follow_changes(self) -> None:
        """Apply the order and strategy events since the last read to the stops in memory."""
        orders = await self.store.order_changes_after(self._orders_cursor.position, CHANGES_PER_READ)
        strategies = await self.store.strategy_changes_after(self._strategies_cursor.position, CHANGES_PER_READ)
        new_orders = set(self._orders_cursor.unseen(change.id for change in orders))
        new_strategies = set(self._strategies_cursor.unseen(change.id for change in strategies))
        changes = [c for c in orders if c.id in new_orders] + [c for c in strategies if c.id in new_strategies]
        if changes:
            for change in changes:
                if _exit_ended_open(change):
                    self.index.rearm(change.strategy_id)
            await self._refresh({change.strategy_id for change in changes})
        self._orders_cursor.advance(change.id for change in orders)
        self._strategies_cursor.advance(change.id for change in strategies)

    async def _refresh(self, strategy_ids: set[int]) -> None:
        for strategy in await self.store.strategies_by_id(strategy_ids):
            token = await self._token_of(strategy) if watched(strategy) else None
            if token is None:
                self.index.remove(strategy.id)
                self._records.pop(strategy.id, None)
                continue
            self._records[strategy.id] = strategy
            self.index.put(strategy, token)
        self._sync_feeds()

    async def _token_of(self, strategy: StrategyRecord) -> int | None:
        if not watched(strategy):
            return None
        token = await self.instruments.token_of(strategy.exchange, strategy.symbol)
        if token is None:
            self.counts.untracked_symbols += 1
            log.error("market data: %s:%s of strategy %s is not in today's instruments dump; its stop-loss "
                      "is NOT watched (check the symbol)", strategy.exchange, strategy.symbol, strategy.id)
        return token

    # ---- ticks ---------------------------------------------------------------------------------

    def on_ticks(self, account_id: int, ticks: list[dict[str, Any]], received_at: float) -> None:
        """On the loop: each tick's price against the stops of its instrument."""
        feed = self.feeds.get(account_id)
        if feed is not None:
            feed.last_tick_at, feed.stale_alerted = received_at, False
            feed.ticks += len(ticks)
        self.counts.ticks += len(ticks)
        for tick in ticks:
            try:
                price = Decimal(str(tick["last_price"]))
                token = int(tick["instrument_token"])
            except (KeyError, TypeError, ValueError, ArithmeticError):
                continue
            for stop in self.index.crossed(token, price):
                self.counts.stops_crossed += 1
                task = asyncio.get_running_loop().create_task(self._fire(stop, price, received_at))
                self._fires.add(task)
                task.add_done_callback(self._fires.discard)

    async def _fire(self, stop: Stop, price: Decimal, received_at: float) -> None:
        record = self._records.get(stop.strategy_id)
        if record is None:
            return
        tick_at = datetime.fromtimestamp(received_at, UTC)
        try:
            await self.starter.place_sl_sell_order(
                record, price, trigger_tick_at=tick_at,
                reason=f"stop-loss {stop.level} crossed by a tick at {price}",
            )
        except DuplicateOrderError as duplicate:
            self.counts.sl_sell_duplicates += 1
            log.info("stop-loss of strategy %s already has its exit: %s", stop.strategy_id, duplicate)
            return
        except Exception:
            self.counts.sl_sell_failures += 1
            log.exception("stop-loss of strategy %s: SL_SELL could not be started; trying again on a tick "
                          "after %.0fs", stop.strategy_id, RETRY_FIRE_SECONDS)
            asyncio.get_running_loop().call_later(RETRY_FIRE_SECONDS, self._arm_again, stop.strategy_id)
            return
        self.counts.sl_sell_started += 1
        log.info("stop-loss of strategy %s (level %s) hit by a tick at %s: SL_SELL started", stop.strategy_id,
                 stop.level, price)
        if self._on_started is not None:
            self._on_started(stop, received_at)

    def _arm_again(self, strategy_id: int) -> None:
        self.index.rearm(strategy_id)
        self._reload_wanted = True  # the store says whether the position is still open
        self._wake.set()

    # ---- connections ---------------------------------------------------------------------------

    def _sync_feeds(self) -> None:
        for account_id in self.index.accounts() - self.feeds.keys():
            feed = AccountFeed(account_id)
            self.feeds[account_id] = feed
            feed.task = asyncio.get_running_loop().create_task(self._keep_connected(feed))
        for feed in self.feeds.values():
            self._sync_subscriptions(feed)

    def _sync_subscriptions(self, feed: AccountFeed) -> None:
        if not feed.connected or feed.connection is None:
            return
        wanted = self.index.instrument_tokens(feed.account_id)
        added, dropped = sorted(wanted - feed.subscribed), sorted(feed.subscribed - wanted)
        feed.connection.subscribe(added)
        feed.connection.unsubscribe(dropped)
        feed.subscribed = wanted

    async def _keep_connected(self, feed: AccountFeed) -> None:
        """Open the account's connection; when it closes, open a new one (fresh token) after a backoff."""
        backoff = FIRST_BACKOFF_SECONDS
        while not self._stopping:
            try:
                credentials = await self.store.broker_credentials(feed.account_id)
            except Exception as error:  # no token yet (log in), or the store is away
                feed.last_problem = f"no access token: {type(error).__name__}: {error}"
                log.warning("market data: account %s cannot connect: %s", feed.account_id, feed.last_problem)
            else:
                feed.changed.clear()
                connection = self._connect(feed.account_id, credentials.api_key, credentials.access_token, self)
                feed.connection = connection
                connection.open()
                opened_now = connection
                try:
                    await asyncio.wait_for(
                        self._until(feed, lambda: feed.connected or feed.connection is not opened_now),  # noqa: B023
                        CONNECT_WAIT_SECONDS)
                except TimeoutError:
                    connection.connection_failed(f"no handshake within {CONNECT_WAIT_SECONDS:.0f}s")
                if feed.connected and feed.connection is connection:
                    opened = time.monotonic()
                    await self._until(feed, lambda: not feed.connected)
                    if time.monotonic() - opened > STABLE_CONNECTION_SECONDS:
                        backoff = FIRST_BACKOFF_SECONDS
            if self._stopping:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._reconnect_max)

    async def _until(self, feed: AccountFeed, condition: Callable[[], bool]) -> None:
        while not condition():
            await feed.changed.wait()
            feed.changed.clear()

    # TickerListener, called on the loop.
    def ticker_connected(self, connection: Connection) -> None:
        feed = self.feeds.get(connection.key)
        if feed is None or feed.connection is not connection:
            connection.close()  # given up on already
            return
        feed.connected, feed.connected_at, feed.last_problem = True, time.time(), None
        feed.connects += 1
        feed.subscribed = set()
        feed.changed.set()
        log.info("market data: account %s connected to the ticker (connect #%d)", feed.account_id, feed.connects)
        if feed.connects > 1:
            self.request_reload()  # events may have been missed while away; subscriptions follow the reload
        self._sync_subscriptions(feed)

    def ticker_ticks(self, connection: Connection, ticks: list[dict[str, Any]], received_at: float) -> None:
        feed = self.feeds.get(connection.key)
        if feed is not None and feed.connection is connection:
            self.on_ticks(feed.account_id, ticks, received_at)

    def ticker_closed(self, connection: Connection, code: int | None, reason: str) -> None:
        feed = self.feeds.get(connection.key)
        if feed is None or feed.connection is not connection:
            return
        if feed.connected and not self._stopping:
            log.warning("market data: account %s ticker closed (%s %s); reconnecting", feed.account_id, code, reason)
        feed.connected, feed.last_problem = False, f"closed: {code} {reason}".strip()
        feed.subscribed = set()
        feed.changed.set()

    # ---- health --------------------------------------------------------------------------------

    def health(self) -> list[dict[str, Any]]:
        now = time.time()
        return [feed.health(now) for _, feed in sorted(self.feeds.items())]

    def health_lines(self) -> list[str]:
        now = time.time()
        lines = [feed.health_line(now) for _, feed in sorted(self.feeds.items())]
        return lines or ["no account has an open position with a stop-loss: no ticker connection"]

    async def _watch_staleness(self, stop: asyncio.Event) -> None:
        while not await _wait(stop, 1.0):
            now = time.time()
            if not self._market_open(datetime.now(UTC)):
                continue
            for feed in self.feeds.values():
                if not self.index.instrument_tokens(feed.account_id):
                    continue
                since = feed.last_tick_at or feed.connected_at or feed.created_at
                if feed.stale_alerted or now - since < self._stale_seconds:
                    continue
                feed.stale_alerted = True
                self.counts.stale_alerts += 1
                title = f"no ticks for account {feed.account_id}"
                message = (f"the market is open but account {feed.account_id} has had no tick for "
                           f"{now - since:.0f}s ({feed.health_line(now)}); stop-losses are not being watched")
                log.critical("ALERT CRITICAL: %s — %s", title, message)
                if self._alert is not None:
                    try:
                        await self._alert(title, message)
                    except Exception:
                        log.exception("market data: the stale-ticks alert could not be delivered")


# An exit that ended so: the position (or its remainder) is still open, and the next crossing tick sells it.
REARMING_OUTCOMES = RETRYABLE_OUTCOMES | {Outcome.PARTIALLY_FILLED}


def _exit_ended_open(change: StrategyChange) -> bool:
    """An exit order ended with the position still open (nothing or part sold): arm its stop again."""
    return (change.source == "order" and change.event_type == OrderEventType.ORDER_EXECUTED
            and change.order_type in ("SELL", "SL_SELL") and change.outcome in REARMING_OUTCOMES)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
