"""reconcile_reports: what each reconcile run of a broker account found and did.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import UTCDateTime, json_document

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "reconcile_reports",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("broker_account_id", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("repaired", sa.Integer(), nullable=False),
        sa.Column("needs_person", sa.Integer(), nullable=False),
        sa.Column("report", json_document(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_reports")),
        sa.ForeignKeyConstraint(
            ["broker_account_id"],
            ["broker_accounts.id"],
            name=op.f("fk_reconcile_reports_broker_account_id_broker_accounts"),
        ),
    )
    op.create_index(
        op.f("ix_reconcile_reports_broker_account_id_id"), "reconcile_reports", ["broker_account_id", "id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_reconcile_reports_broker_account_id_id"), table_name="reconcile_reports")
    op.drop_table("reconcile_reports")
