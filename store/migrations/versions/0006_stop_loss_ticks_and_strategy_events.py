"""orders: when the tick that triggered a stop-loss arrived; strategy_events: settings and status changes.

The market-data service follows both by id: order_events tell it of positions opened and closed,
strategy_events of stop-losses changed and strategies started or stopped.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import UTCDateTime, json_document

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("trigger_tick_at", UTCDateTime(), nullable=True))
    op.create_table(
        "strategy_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("strategy_id", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(40), nullable=False),
        sa.Column("data", json_document(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_strategy_events")),
        sa.ForeignKeyConstraint(
            ["strategy_id"], ["strategies.id"], name=op.f("fk_strategy_events_strategy_id_strategies")
        ),
    )


def downgrade() -> None:
    op.drop_table("strategy_events")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("trigger_tick_at")
