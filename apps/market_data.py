"""The market-data service as a program: `engine market-data` (or `python -m apps.market_data`).

It runs `starter.market_data.MarketDataService` with Kite's ticker (`KiteTicker`, one connection per
broker account), serves its Prometheus metrics on `ENGINE_MARKET_DATA_METRICS_PORT` (9466), logs a health line
per account every `HEALTH_LOG_SECONDS`, and raises one alert (logged; POSTed to ENGINE_ALERT_WEBHOOK_URL when
set) when ticks stop during market hours. `engine market-data --status` prints the health lines of a
running service, read from its metrics endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from activities.control import alert_sinks_from_settings
from brokers.kite_ticker import TickerConnection, fetch_instruments, ticker_root_for
from engine.logs import configure_logging
from engine.market_hours import MarketCalendar, parse_holidays
from engine.models import Alert, AlertLevel
from engine.settings import Settings
from engine.temporal import connect
from starter.market_data import AlertSender, InstrumentTokens, MarketDataService
from starter.orders import OrderStarter
from store import Store

log = logging.getLogger("engine.market_data")

HEALTH_LOG_SECONDS = 30.0
STATUS_TIMEOUT_SECONDS = 3.0


def build_service(
    settings: Settings, store: Store, starter: OrderStarter, *,
    market_open: Callable[[datetime], bool] | None = None, alert: AlertSender | None = None,
) -> MarketDataService:
    """The service wired to Kite (or the paper broker at ENGINE_KITE_ROOT), the store and the order starter;
    `market_open` and `alert` default to NSE's hours (ENGINE_NSE_HOLIDAYS) and the configured alert sinks."""
    root = settings.kite_ticker_root or ticker_root_for(settings.kite_root)
    loop = asyncio.get_running_loop()

    async def instruments_dump() -> dict[str, int]:
        credentials = None
        for account_id in await store.broker_account_ids():
            try:
                credentials = await store.broker_credentials(account_id)
                break
            except Exception:  # no token for this one: try the next
                continue
        if credentials is None:
            raise RuntimeError("no broker account has an access token to fetch the instruments dump with; log in")
        rows = await asyncio.to_thread(fetch_instruments, credentials.api_key, credentials.access_token,
                                       settings.kite_root, settings.broker_http_timeout_seconds * 4)
        return {f"{row.exchange}:{row.tradingsymbol}": row.instrument_token for row in rows}

    def open_connection(account_id: int, api_key: str, access_token: str, listener: Any) -> TickerConnection:
        return TickerConnection(account_id, api_key, access_token, root, loop, listener)

    calendar = MarketCalendar(parse_holidays(settings.nse_holidays))
    sinks = alert_sinks_from_settings(settings)

    async def send_alert(title: str, message: str) -> None:
        delivered = Alert(level=AlertLevel.CRITICAL, title=title, message=message, created_at=datetime.now(UTC))
        for sink in sinks:
            await sink.send(delivered)

    return MarketDataService(
        store, starter, InstrumentTokens(settings.instruments_cache_dir, instruments_dump), open_connection,
        poll_seconds=settings.market_data_poll_seconds,
        reconnect_max_seconds=settings.market_data_reconnect_max_seconds,
        stale_seconds=settings.market_data_stale_seconds,
        market_open=market_open or calendar.is_open,
        alert=alert or send_alert,
    )


class MarketDataCollector(Collector):
    """The service's state as metrics, read at scrape time."""

    def __init__(self, service: MarketDataService):
        self.service = service

    def collect(self) -> Iterator[Any]:
        connected = GaugeMetricFamily("engine_market_data_connected", "1 while the account's ticker is connected",
                                      labels=["account"])
        subscribed = GaugeMetricFamily("engine_market_data_subscribed_instruments",
                                       "instruments subscribed on the account's ticker", labels=["account"])
        age = GaugeMetricFamily("engine_market_data_last_tick_age_seconds",
                                "seconds since the account's last tick (-1: none yet)", labels=["account"])
        connects = CounterMetricFamily("engine_market_data_connects", "ticker connections opened",
                                       labels=["account"])
        for state in self.service.health():
            account = str(state["account_id"])
            connected.add_metric([account], 1.0 if state["connected"] else 0.0)
            subscribed.add_metric([account], float(state["subscribed"]))
            tick_age = state["last_tick_age_seconds"]
            age.add_metric([account], -1.0 if tick_age is None else float(tick_age))
            connects.add_metric([account], float(state["connects"]))
        yield from (connected, subscribed, age, connects)
        counts = self.service.counts
        yield GaugeMetricFamily("engine_market_data_armed_stops", "stop-losses armed in memory",
                                value=float(len(self.service.index)))
        for name, value, text in (
            ("ticks", counts.ticks, "ticks received"),
            ("stops_crossed", counts.stops_crossed, "stop-losses a tick crossed"),
            ("sl_sell_started", counts.sl_sell_started, "SL_SELL orders started"),
            ("sl_sell_duplicates", counts.sl_sell_duplicates, "SL_SELL starts refused as duplicates"),
            ("sl_sell_failures", counts.sl_sell_failures, "SL_SELL starts that failed (retried)"),
            ("reloads", counts.reloads, "full reloads of the stop-losses from the store"),
        ):
            yield CounterMetricFamily(f"engine_market_data_{name}", text, value=float(value))


async def serve(settings: Settings, store: Store, starter: OrderStarter, stop: asyncio.Event,
                service: MarketDataService | None = None) -> MarketDataService:
    """Run the service (`build_service`'s unless given) with its metrics and health lines until `stop` is set."""
    service = service or build_service(settings, store, starter)
    server = None
    if settings.market_data_metrics_port:
        registry = CollectorRegistry()
        registry.register(MarketDataCollector(service))
        server, _ = start_http_server(settings.market_data_metrics_port, settings.metrics_host, registry=registry)
        log.info("market data metrics on http://%s:%d/metrics", settings.metrics_host,
                 settings.market_data_metrics_port)
    health = asyncio.create_task(_log_health(service, stop))
    try:
        await service.run(stop)
    finally:
        health.cancel()
        if server is not None:
            server.shutdown()
    return service


async def _log_health(service: MarketDataService, stop: asyncio.Event) -> None:
    while True:
        try:
            await asyncio.wait_for(stop.wait(), HEALTH_LOG_SECONDS)
            return
        except TimeoutError:
            for line in service.health_lines():
                log.info("market data health: %s", line)


def status_lines(settings: Settings) -> list[str]:
    """A running service's health, one line per account, from its metrics endpoint."""
    host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "") else settings.metrics_host
    url = f"http://{host}:{settings.market_data_metrics_port}/metrics"
    try:
        text = httpx.get(url, timeout=STATUS_TIMEOUT_SECONDS).text
    except httpx.HTTPError as error:
        raise ConnectionError(f"the market-data service does not answer at {url} ({error}); is it running, "
                              "with this ENGINE_MARKET_DATA_METRICS_PORT?") from None
    accounts: dict[str, dict[str, float]] = {}
    armed = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "account" in sample.labels:
                accounts.setdefault(sample.labels["account"], {})[sample.name] = sample.value
            elif sample.name == "engine_market_data_armed_stops":
                armed = sample.value
    lines = [f"{int(armed)} stop-losses armed"]
    for account, values in sorted(accounts.items(), key=lambda item: int(item[0])):
        age = values.get("engine_market_data_last_tick_age_seconds", -1.0)
        lines.append(
            f"account {account}: {'connected' if values.get('engine_market_data_connected') else 'DISCONNECTED'}, "
            f"{int(values.get('engine_market_data_subscribed_instruments', 0))} instruments subscribed, "
            + ("no tick yet" if age < 0 else f"last tick {age:.1f}s ago")
        )
    return lines


async def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    store = await Store.connect(settings.database_url, settings.engine_secret_key,
                                pool_size=settings.database_pool_size)
    client = await connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(settings, store, OrderStarter(client, store, settings), stop)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
