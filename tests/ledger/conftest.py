"""Ledger fixtures: a private PostgreSQL for the session, and a fresh ledger database per test
on each backend (``ledger_url`` is parametrized: SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gridfleet.runtime.postgres_server import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def fresh_database(server: PostgresServer) -> str:
    """A new, empty database on ``server``; its URL."""
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs' / 'ledger.sqlite'}"
    return fresh_database(request.getfixturevalue("postgres"))
