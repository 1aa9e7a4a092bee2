"""orders: the fill applied so far (a later look at the broker may add to it) and why an exit was sent.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import ExactDecimal

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("applied_quantity", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("applied_average_price", ExactDecimal(), nullable=True))
        batch.add_column(sa.Column("exit_reason", sa.String(32), nullable=True))
    # Orders applied before this revision applied their whole filled quantity at once.
    op.execute(
        "UPDATE orders SET applied_quantity = filled_quantity, applied_average_price = average_price "
        "WHERE fill_applied_at IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("exit_reason")
        batch.drop_column("applied_average_price")
        batch.drop_column("applied_quantity")
