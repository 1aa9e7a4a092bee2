"""Users, broker accounts and strategies.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import ExactDecimal, UTCDateTime

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("api_key_prefix", sa.String(16), nullable=False),
        sa.Column("api_key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
        sa.UniqueConstraint("api_key_prefix", name=op.f("uq_users_api_key_prefix")),
    )

    op.create_table(
        "broker_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("broker", sa.String(16), nullable=False),
        sa.Column("api_key_encrypted", sa.Text(), nullable=False),
        sa.Column("api_secret_encrypted", sa.Text(), nullable=False),
        sa.Column("access_token_encrypted", sa.Text(), nullable=True),
        sa.Column("token_expires_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broker_accounts")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_broker_accounts_user_id_users")),
    )
    op.create_index(op.f("ix_broker_accounts_user_id"), "broker_accounts", ["user_id"])

    op.create_table(
        "strategies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("broker_account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("symbol", sa.String(40), nullable=False),
        sa.Column("exchange", sa.String(10), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("product", sa.String(10), nullable=False),
        sa.Column("entry_time", sa.Time(), nullable=True),
        sa.Column("exit_time", sa.Time(), nullable=True),
        sa.Column("stop_loss_price", ExactDecimal(), nullable=True),
        sa.Column("stop_loss_pct", ExactDecimal(9, 4), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("stopped_at", UTCDateTime(), nullable=True),
        sa.Column("position", sa.String(8), nullable=False),
        sa.Column("open_quantity", sa.Integer(), nullable=False),
        sa.Column("entry_price", ExactDecimal(), nullable=True),
        sa.Column("entry_filled_at", UTCDateTime(), nullable=True),
        sa.Column("exit_price", ExactDecimal(), nullable=True),
        sa.Column("exit_filled_at", UTCDateTime(), nullable=True),
        sa.Column("realized_pnl", ExactDecimal(), nullable=False),
        sa.Column("position_cycle", sa.Integer(), nullable=False),
        sa.Column("sl_triggered", sa.Boolean(), nullable=False),
        sa.Column("sl_trigger_price", ExactDecimal(), nullable=True),
        sa.Column("exit_reason", sa.String(32), nullable=True),
        sa.Column("needs_intervention", sa.Boolean(), nullable=False),
        sa.Column("intervention_reason", sa.Text(), nullable=True),
        sa.Column("intervention_at", UTCDateTime(), nullable=True),
        sa.Column("intervention_cleared_by", sa.String(64), nullable=True),
        sa.Column("intervention_cleared_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_action", sa.Text(), nullable=True),
        sa.Column("last_order_workflow_id", sa.String(200), nullable=True),
        sa.Column("active_order_workflow_id", sa.String(200), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_strategies")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_strategies_user_id_users")),
        sa.ForeignKeyConstraint(
            ["broker_account_id"],
            ["broker_accounts.id"],
            name=op.f("fk_strategies_broker_account_id_broker_accounts"),
        ),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_strategies_user_id_name")),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_strategies_quantity_positive")),
        sa.CheckConstraint("open_quantity >= 0", name=op.f("ck_strategies_open_quantity_not_negative")),
        sa.CheckConstraint("position_cycle >= 1", name=op.f("ck_strategies_position_cycle_positive")),
        sa.CheckConstraint("status IN ('STOPPED', 'RUNNING', 'SL_TRIGGERED')", name=op.f("ck_strategies_status_known")),
        sa.CheckConstraint("position IN ('FLAT', 'LONG')", name=op.f("ck_strategies_position_known")),
    )
    op.create_index(op.f("ix_strategies_user_id"), "strategies", ["user_id"])
    op.create_index(op.f("ix_strategies_broker_account_id"), "strategies", ["broker_account_id"])
    op.create_index(op.f("ix_strategies_status"), "strategies", ["status"])
    op.create_index(op.f("ix_strategies_needs_intervention"), "strategies", ["needs_intervention"])


def downgrade() -> None:
    op.drop_table("strategies")
    op.drop_table("broker_accounts")
    op.drop_table("users")
