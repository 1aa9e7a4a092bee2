"""broker_accounts: the daily Kite login — when the token was issued, the Kite user it belongs to, the
one-time nonce of a login in progress, and why the account was logged out.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import UTCDateTime

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("broker_accounts") as batch:
        batch.add_column(sa.Column("token_issued_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("broker_user_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("login_nonce_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("login_nonce_expires_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("logged_out_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("logged_out_reason", sa.String(300), nullable=True))
        batch.add_column(sa.Column("login_alerted_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("broker_accounts") as batch:
        for column in ("login_alerted_at", "logged_out_reason", "logged_out_at", "login_nonce_expires_at",
                       "login_nonce_hash", "broker_user_id", "token_issued_at"):
            batch.drop_column(column)
