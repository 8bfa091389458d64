"""Each aggregator's part of each round; when a round's first event arrived.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aggregator_rounds",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("round_id", sa.String(128), primary_key=True),
        sa.Column("aggregator", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("event_ms", sa.Float, nullable=True),
        sa.Column("batch_ms", sa.Float, nullable=True),
        sa.Column("on_time", sa.Boolean, nullable=True),
        sa.Column("commands", sa.Integer, nullable=False),
        sa.Column("refused", sa.Integer, nullable=False),
        sa.Column("strategy_errors", sa.Integer, nullable=False),
        sa.Column("transaction_id", sa.String(128), nullable=True),
    )
    # rounds written before this revision have no time: NULL
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("received_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("received_at")
    op.drop_table("aggregator_rounds")
