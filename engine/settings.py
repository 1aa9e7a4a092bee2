"""The engine's settings: read from the environment (and `.env` in the working directory) once, then
passed down. The engine's own variables carry the `ENGINE_` prefix (`ENGINE_LOG_LEVEL`, not `LOG_LEVEL`,
which other tools set for themselves); the database keeps the common `DATABASE_URL`.

The Temporal connection itself (address, namespace, API key, TLS, profiles) follows Temporal's own
conventions through `temporalio.envconfig.ClientConfig`; see `engine.temporal.connect`.
"""

from __future__ import annotations

from datetime import time
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path("data")


class SettingsError(ValueError):
    """The environment holds a setting the engine cannot use."""


def environment_variable(field_name: str) -> str:
    """The variable a setting is read from: ENGINE_ORDER_TIMEOUT_SECONDS for order_timeout_seconds."""
    field = Settings.model_fields.get(field_name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if field is None and field_name.isupper():
        return field_name
    return f"ENGINE_{field_name.upper()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ENGINE_",
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        env_ignore_empty=True,
        populate_by_name=True,
    )

    # Store. SQLite under ./data is the embedded default; production uses postgresql+asyncpg://.
    database_url: str = Field(
        default=f"sqlite+aiosqlite:///{DATA_DIR}/engine.db",
        validation_alias=AliasChoices("DATABASE_URL", "ENGINE_DATABASE_URL"),
    )
    # Key that encrypts broker credentials at rest (Fernet, urlsafe base64 of 32 bytes). Unset in the
    # embedded mode: a key is generated once into ./data/secret.key.
    engine_secret_key: str | None = Field(default=None, repr=False, validation_alias="ENGINE_SECRET_KEY")
    database_pool_size: int = Field(default=20, ge=1)

    # Temporal.
    task_queue: str = "orders"
    # Workflow tasks one worker process holds at once (docs/deployment.md, "Sizing"). Each order's first
    # task holds its slot while it places the order and watches for the fill, so this bounds how much of
    # a burst one Python event loop takes on; the rest waits, untimed, in Temporal's queue, and no task
    # held here outlives its timeout.
    worker_workflow_task_slots: int = Field(default=40, ge=1, le=1000)
    # Order workflows kept in the worker's memory between their tasks, about 120 kB each; one evicted
    # is replayed from its short history when its next task comes (an order followed past its first
    # task, when it fills). Most orders end in their first task and are never kept.
    worker_cached_workflows: int = Field(default=200, ge=0)

    # Orders.
    order_retry_attempts: int = Field(default=5, ge=1)
    order_timeout_seconds: float = Field(default=60.0, gt=0)
    order_poll_interval_seconds: float = Field(default=0.25, gt=0)
    market_protection: int = -1
    enforce_market_hours: bool = True
    # A scheduled market order that missed its time by more than this is not sent late.
    schedule_catchup_window_seconds: float = Field(default=60.0, ge=10)
    # Comma-separated ISO dates on which NSE is closed, e.g. "2026-01-26,2026-03-03".
    nse_holidays: str | None = None

    # Broker. ENGINE_KITE_ROOT points the official client at another host (the paper broker).
    kite_root: str | None = None
    broker_http_timeout_seconds: float = Field(default=7.0, gt=0)
    broker_orders_per_second: int = Field(default=10, ge=1)
    # Before an order is sent again after an ambiguous failure, its tag must stay absent from the order
    # book this long beyond the request's window (docs/control.md, "Twins"): a late BUY entry costs less
    # than a doubled one; an exit waits less, a stop-loss not at all.
    resend_quiet_seconds_buy: float = Field(default=10.0, ge=0)
    resend_quiet_seconds_sell: float = Field(default=2.0, ge=0)
    resend_quiet_seconds_stop_loss: float = Field(default=0.0, ge=0)
    # How long an order sent more than once has its tag watched after it ended, for a twin.
    twin_watch_seconds: float = Field(default=120.0, ge=0)
    # A follower (the heartbeating activity) silent this long is taken for dead (a killed worker) and its
    # order followed by another worker. Heartbeats are throttled to 80% of it.
    follow_heartbeat_timeout_seconds: float = Field(default=30.0, ge=1)

    # Reconciliation (docs/control.md). Kite squares off open MIS positions itself from this time (IST).
    broker_square_off_time: time = time(15, 20)
    reconcile_interval_minutes: int = Field(default=5, ge=1, le=60)

    # Market data (docs/operations.md, "The market-data service"). KITE_TICKER_ROOT: Kite's ticker by
    # default, the paper broker's (ws:// on KITE_ROOT's host) when KITE_ROOT is set.
    kite_ticker_root: str | None = None
    # How often the service reads new order and strategy events (one indexed query each).
    market_data_poll_seconds: float = Field(default=0.25, gt=0)
    # The instruments dump, fetched once a day, is kept here (one JSON file per IST date).
    instruments_cache_dir: Path = DATA_DIR / "instruments"
    # Longest wait between two reconnects of a ticker connection (the backoff doubles up to it).
    market_data_reconnect_max_seconds: float = Field(default=30.0, gt=0)
    # During market hours, no tick for this long on a connection with subscriptions raises one alert.
    market_data_stale_seconds: float = Field(default=60.0, gt=0)
    # The service's Prometheus endpoint (/metrics); 0 turns it off.
    market_data_metrics_port: int = Field(default=9466, ge=0, le=65535)
    # The live stream of order events (GET /execution/events, docs/api.md): how often each stream reads
    # the store, and how long it stays silent before a heartbeat comment.
    events_poll_interval_seconds: float = Field(default=0.5, gt=0, le=10)
    events_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)

    # Alerts.
    alert_webhook_url: str | None = None

    # Observability (docs/operations.md). The worker's Prometheus endpoints; a port of 0 turns one off.
    metrics_host: str = "127.0.0.1"  # reachable from other hosts only when configured (docs/operations.md)
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    temporal_metrics_port: int = Field(default=9465, ge=0, le=65535)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _case_insensitive(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.lower() if info.field_name == "log_format" else value.upper()

    @classmethod
    def from_environment(cls) -> Settings:
        """The settings of the environment and `.env`; a value that cannot be used is a SettingsError
        naming the variable to fix, never pydantic's report of field names."""
        try:
            return cls()
        except ValidationError as invalid:
            problems = []
            for error in invalid.errors():
                name = str(error["loc"][0]) if error["loc"] else "?"
                value = f"={error['input']!r}" if isinstance(error.get("input"), str | int | float) else ""
                problems.append(f"{environment_variable(name)}{value}: {error['msg']}")
            raise SettingsError("; ".join(problems) + " (set in the environment or in .env)") from None

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def resend_quiet_seconds(self, order_type: str | None) -> float:
        """Beyond the request's window: how long a tag must stay unseen before the order is sent again."""
        if order_type == "SL_SELL":
            return self.resend_quiet_seconds_stop_loss
        if order_type == "SELL":
            return self.resend_quiet_seconds_sell
        return self.resend_quiet_seconds_buy

    @property
    def retry_window_seconds(self) -> float:
        """How long a retry after an ambiguous failure waits before it trusts a "not found"."""
        return self.broker_http_timeout_seconds + 1.0


MONEY_QUANT = Decimal("0.01")
