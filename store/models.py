"""The tables. ORM rows stay inside the store; callers get the frozen records of `store.records`."""

from __future__ import annotations

from datetime import datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Time,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.types import ExactDecimal, UTCDateTime, json_document

# Named constraints, so that later migrations (and SQLite batch mode) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite makes only a plain INTEGER PRIMARY KEY an auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")

WORKFLOW_ID_LENGTH = 200


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # Lookup id shown in the key itself; only the key's SHA-256 is stored.
    api_key_prefix: Mapped[str] = mapped_column(String(16), unique=True)
    api_key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BrokerAccount(Base):
    __tablename__ = "broker_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    broker: Mapped[str] = mapped_column(String(16))
    # Fernet tokens; see store.secrets.
    api_key_encrypted: Mapped[str] = mapped_column(Text)
    api_secret_encrypted: Mapped[str] = mapped_column(Text)
    access_token_encrypted: Mapped[str | None] = mapped_column(Text)
    token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The daily login (docs/deployment.md, "Each morning").
    token_issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    broker_user_id: Mapped[str | None] = mapped_column(String(32))
    login_nonce_hash: Mapped[str | None] = mapped_column(String(64))
    login_nonce_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    logged_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    logged_out_reason: Mapped[str | None] = mapped_column(String(300))
    login_alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Strategy(Base):
    __tablename__ = "strategies"
    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("open_quantity >= 0", name="open_quantity_not_negative"),
        CheckConstraint("position_cycle >= 1", name="position_cycle_positive"),
        CheckConstraint("status IN ('STOPPED', 'RUNNING', 'SL_TRIGGERED')", name="status_known"),
        CheckConstraint("position IN ('FLAT', 'LONG')", name="position_known"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    broker_account_id: Mapped[int] = mapped_column(ForeignKey("broker_accounts.id"), index=True)

    # Configuration.
    name: Mapped[str] = mapped_column(String(100))
    symbol: Mapped[str] = mapped_column(String(40))
    exchange: Mapped[str] = mapped_column(String(10))
    quantity: Mapped[int] = mapped_column(Integer)
    product: Mapped[str] = mapped_column(String(10))
    entry_time: Mapped[time | None] = mapped_column(Time)
    exit_time: Mapped[time | None] = mapped_column(Time)
    stop_loss_price: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    stop_loss_pct: Mapped[Decimal | None] = mapped_column(ExactDecimal(9, 4))

    # Lifecycle.
    status: Mapped[str] = mapped_column(String(16), index=True)
    stop_reason: Mapped[str | None] = mapped_column(Text)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Position.
    position: Mapped[str] = mapped_column(String(8))
    open_quantity: Mapped[int] = mapped_column(Integer)
    entry_price: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    entry_filled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_price: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    exit_filled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    realized_pnl: Mapped[Decimal] = mapped_column(ExactDecimal())
    position_cycle: Mapped[int] = mapped_column(Integer)

    # Stop-loss.
    sl_triggered: Mapped[bool] = mapped_column(Boolean)
    sl_trigger_price: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    exit_reason: Mapped[str | None] = mapped_column(String(32))

    # Manual intervention.
    needs_intervention: Mapped[bool] = mapped_column(Boolean, index=True)
    intervention_reason: Mapped[str | None] = mapped_column(Text)
    intervention_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    intervention_cleared_by: Mapped[str | None] = mapped_column(String(64))
    intervention_cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Orders.
    last_error: Mapped[str | None] = mapped_column(Text)
    last_action: Mapped[str | None] = mapped_column(Text)
    last_order_workflow_id: Mapped[str | None] = mapped_column(String(WORKFLOW_ID_LENGTH))
    active_order_workflow_id: Mapped[str | None] = mapped_column(String(WORKFLOW_ID_LENGTH))

    # Optimistic concurrency: every UPDATE checks and bumps it.
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads it once, at mapping)


class Order(Base):
    """One row per order workflow: what was asked, what the broker did."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("filled_quantity >= 0 AND filled_quantity <= quantity", name="filled_within_quantity"),
        CheckConstraint("order_type IN ('BUY', 'SELL', 'SL_SELL')", name="order_type_known"),
        CheckConstraint("transaction_type IN ('BUY', 'SELL')", name="transaction_type_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(WORKFLOW_ID_LENGTH), unique=True)
    strategy_id: Mapped[int] = mapped_column(ForeignKey("strategies.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    order_type: Mapped[str] = mapped_column(String(8))
    transaction_type: Mapped[str] = mapped_column(String(4))
    quantity: Mapped[int] = mapped_column(Integer)
    symbol: Mapped[str] = mapped_column(String(40))
    exchange: Mapped[str] = mapped_column(String(10))
    tag: Mapped[str] = mapped_column(String(20), index=True)
    trigger_price: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    requested_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)

    broker_order_id: Mapped[str | None] = mapped_column(String(64))
    adopted: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(32))
    filled_quantity: Mapped[int] = mapped_column(Integer)
    average_price: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    broker_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(8))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When a placement request last left for the broker; cleared when it surely did not arrive.
    placement_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    placed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    filled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set once, when the fill reached the strategy: what makes apply_fill idempotent.
    fill_applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # How much of the fill the strategy holds so far, at what average: a later, larger fill of the same
    # order (an unresolved order settled from the broker's record) applies only the difference.
    applied_quantity: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    applied_average_price: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    # Why an exit was sent: SCHEDULED_EXIT, STOP_LOSS, MANUAL, SQUARE_OFF, BROKER_SQUARE_OFF.
    exit_reason: Mapped[str | None] = mapped_column(String(32))
    # A stop-loss exit: when the tick that crossed the stop arrived (its price is trigger_price).
    trigger_tick_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OrderLog(Base):
    """The audit row of one order attempt (ATTEMPTING, then SUCCESS, FAILED or ERROR)."""

    __tablename__ = "order_logs"
    __table_args__ = (
        CheckConstraint("status IN ('ATTEMPTING', 'SUCCESS', 'FAILED', 'ERROR')", name="status_known"),
        Index("ix_order_logs_attempted_at_id", "attempted_at", "id"),
        Index("ix_order_logs_user_id_attempted_at", "user_id", "attempted_at"),
        Index("ix_order_logs_strategy_id_attempted_at", "strategy_id", "attempted_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(WORKFLOW_ID_LENGTH))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    strategy_id: Mapped[int] = mapped_column(ForeignKey("strategies.id"))
    order_type: Mapped[str] = mapped_column(String(8))
    order_data: Mapped[dict[str, Any]] = mapped_column(json_document())
    status: Mapped[str] = mapped_column(String(10))
    result: Mapped[dict[str, Any] | None] = mapped_column(json_document())
    error_message: Mapped[str | None] = mapped_column(Text)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    execution_time_ms: Mapped[int | None] = mapped_column(Integer)


class OrderEvent(Base):
    """Append-only: every state change of every order. ORDER_EXECUTED rows are the outbox."""

    __tablename__ = "order_events"
    __table_args__ = (
        Index("ix_order_events_order_id_id", "order_id", "id"),
        Index("ix_order_events_event_type_published_at", "event_type", "published_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    workflow_id: Mapped[str] = mapped_column(String(WORKFLOW_ID_LENGTH))
    event_type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(json_document())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class StrategyEvent(Base):
    """Append-only: a strategy's settings or status changed. What the market-data service follows by id."""

    __tablename__ = "strategy_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    strategy_id: Mapped[int] = mapped_column(ForeignKey("strategies.id"))
    event_type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(json_document())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReconcileReportRow(Base):
    """One reconcile run of one broker account: the counts, and every line of its report."""

    __tablename__ = "reconcile_reports"
    __table_args__ = (Index("ix_reconcile_reports_broker_account_id_id", "broker_account_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    broker_account_id: Mapped[int] = mapped_column(ForeignKey("broker_accounts.id"))
    requested_by: Mapped[str] = mapped_column(String(64))
    dry_run: Mapped[bool] = mapped_column(Boolean)
    matched: Mapped[int] = mapped_column(Integer)
    repaired: Mapped[int] = mapped_column(Integer)
    needs_person: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]] = mapped_column(json_document())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
