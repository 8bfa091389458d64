"""The ledger's first schema: runs, rounds, trades, rejections, gaps, finishes.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("started_by", sa.String(255), nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_table(
        "rounds",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("round_id", sa.String(128), primary_key=True),
        sa.Column("slot", sa.String(16), nullable=False),
        sa.Column("tick", sa.Integer, nullable=False),
        sa.Column("aggregators", sa.Integer, nullable=False),
        sa.Column("shards", sa.Integer, nullable=False),
        sa.Column("hedged", sa.Integer, nullable=False),
        sa.Column("commands", sa.Integer, nullable=False),
        sa.Column("refused", sa.Integer, nullable=False),
        sa.Column("strategy_errors", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("budget_ms", sa.Float, nullable=False),
        sa.Column("on_time", sa.Boolean, nullable=False),
    )
    op.create_table(
        "trades",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("trade_id", sa.String(64), primary_key=True),
        sa.Column("asset_id", sa.String(64), primary_key=True),
        sa.Column("aggregator", sa.String(64), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("market", sa.String(16), nullable=False),
        sa.Column("slot", sa.String(16), nullable=True),
        sa.Column("time", sa.String(32), nullable=True),
        sa.Column("energy_kwh", sa.Float, nullable=False),
        sa.Column("price_ct", sa.Float, nullable=False),
        sa.Column("fee_ct", sa.Float, nullable=False),
        sa.Column("order_id", sa.String(64), nullable=True),
    )
    op.create_table(
        "rejections",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("entry_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("aggregator", sa.String(64), nullable=False),
        sa.Column("transaction_id", sa.String(128), nullable=True),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("command", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_table(
        "gaps",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("entry_id", sa.String(32), primary_key=True),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("rounds", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("first_round", sa.String(64), nullable=True),
        sa.Column("last_round", sa.String(64), nullable=True),
    )
    op.create_table(
        "finishes",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("aggregator", sa.String(64), primary_key=True),
    )


def downgrade() -> None:
    for table in ("finishes", "gaps", "rejections", "trades", "rounds", "runs"):
        op.drop_table(table)
