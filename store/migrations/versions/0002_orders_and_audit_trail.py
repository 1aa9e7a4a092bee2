"""Orders, the order_logs audit log and the order_events trail (also the outbox).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import ExactDecimal, UTCDateTime, json_document

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite makes only a plain INTEGER PRIMARY KEY an auto-incrementing rowid.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(200), nullable=False),
        sa.Column("strategy_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("order_type", sa.String(8), nullable=False),
        sa.Column("transaction_type", sa.String(4), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("symbol", sa.String(40), nullable=False),
        sa.Column("exchange", sa.String(10), nullable=False),
        sa.Column("tag", sa.String(20), nullable=False),
        sa.Column("trigger_price", ExactDecimal(), nullable=True),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("broker_order_id", sa.String(64), nullable=True),
        sa.Column("adopted", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("filled_quantity", sa.Integer(), nullable=False),
        sa.Column("average_price", ExactDecimal(), nullable=True),
        sa.Column("broker_updated_at", UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.String(8), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("placement_sent_at", UTCDateTime(), nullable=True),
        sa.Column("placed_at", UTCDateTime(), nullable=True),
        sa.Column("filled_at", UTCDateTime(), nullable=True),
        sa.Column("fill_applied_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("workflow_id", name=op.f("uq_orders_workflow_id")),
        sa.ForeignKeyConstraint(["strategy_id"], ["strategies.id"], name=op.f("fk_orders_strategy_id_strategies")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_orders_user_id_users")),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_orders_quantity_positive")),
        sa.CheckConstraint(
            "filled_quantity >= 0 AND filled_quantity <= quantity", name=op.f("ck_orders_filled_within_quantity")
        ),
        sa.CheckConstraint("order_type IN ('BUY', 'SELL', 'SL_SELL')", name=op.f("ck_orders_order_type_known")),
        sa.CheckConstraint("transaction_type IN ('BUY', 'SELL')", name=op.f("ck_orders_transaction_type_known")),
    )
    op.create_index(op.f("ix_orders_strategy_id"), "orders", ["strategy_id"])
    op.create_index(op.f("ix_orders_user_id"), "orders", ["user_id"])
    op.create_index(op.f("ix_orders_tag"), "orders", ["tag"])

    op.create_table(
        "order_logs",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("strategy_id", sa.Integer(), nullable=False),
        sa.Column("order_type", sa.String(8), nullable=False),
        sa.Column("order_data", json_document(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("result", json_document(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempted_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("execution_time_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_logs")),
        sa.UniqueConstraint("order_id", name=op.f("uq_order_logs_order_id")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_order_logs_order_id_orders")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_order_logs_user_id_users")),
        sa.ForeignKeyConstraint(["strategy_id"], ["strategies.id"], name=op.f("fk_order_logs_strategy_id_strategies")),
        sa.CheckConstraint(
            "status IN ('ATTEMPTING', 'SUCCESS', 'FAILED', 'ERROR')", name=op.f("ck_order_logs_status_known")
        ),
    )
    op.create_index("ix_order_logs_attempted_at_id", "order_logs", ["attempted_at", "id"])
    op.create_index("ix_order_logs_user_id_attempted_at", "order_logs", ["user_id", "attempted_at"])
    op.create_index("ix_order_logs_strategy_id_attempted_at", "order_logs", ["strategy_id", "attempted_at"])

    op.create_table(
        "order_events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(40), nullable=False),
        sa.Column("data", json_document(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_events")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_order_events_order_id_orders")),
    )
    op.create_index("ix_order_events_order_id_id", "order_events", ["order_id", "id"])
    op.create_index("ix_order_events_event_type_published_at", "order_events", ["event_type", "published_at"])


def downgrade() -> None:
    op.drop_table("order_events")
    op.drop_table("order_logs")
    op.drop_table("orders")
