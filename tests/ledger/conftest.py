"""Ledger fixtures: a private PostgreSQL for the session, and a fresh ledger database per test
on each backend (``ledger_url`` is parametrized: SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gridfleet.runtime.postgres_server import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs' / 'ledger.sqlite'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database("ledger")
