"""Alembic's environment for the ledger: run in-process by :func:`gridfleet.ledger.store.migrate`
on the connection it passes (``config.attributes["connection"]``)."""

from __future__ import annotations

from alembic import context

from gridfleet.ledger.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
