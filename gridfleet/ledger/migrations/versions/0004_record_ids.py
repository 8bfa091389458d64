"""Rejections and gaps keyed by the record's own id (``rid``), no longer by its stream entry: a
record written to the stream again after a broker restart gets a new entry, not a new row.
Rows written before keep their entry id as their record id.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("rejections", "gaps"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "entry_id",
                new_column_name="record_id",
                type_=sa.String(64),
                existing_type=sa.String(32),
                existing_nullable=False,
            )


def downgrade() -> None:
    for table in ("rejections", "gaps"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "record_id",
                new_column_name="entry_id",
                type_=sa.String(32),
                existing_type=sa.String(64),
                existing_nullable=False,
            )
