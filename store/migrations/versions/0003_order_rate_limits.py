"""order_rate_limits: each broker account's next free order-request slot, shared by every worker.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "order_rate_limits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("broker_account_id", sa.Integer(), nullable=False),
        sa.Column("next_free_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_rate_limits")),
        sa.UniqueConstraint("broker_account_id", name=op.f("uq_order_rate_limits_broker_account_id")),
        sa.ForeignKeyConstraint(
            ["broker_account_id"],
            ["broker_accounts.id"],
            name=op.f("fk_order_rate_limits_broker_account_id_broker_accounts"),
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("order_rate_limits")
