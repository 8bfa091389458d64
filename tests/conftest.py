"""Shared fixtures: a real Redis server per test session (started and stopped by the tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gridfleet.runtime.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent
# The captured protocol and the SDK's data files, vendored (see tests/fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROTOCOL_DIR = FIXTURES / "protocol"
STRATEGY_DATA_DIR = FIXTURES / "strategy-data"


def load_example(name: str) -> dict:
    """One captured message from tests/fixtures/protocol/examples (without the .json suffix)."""
    return json.loads((PROTOCOL_DIR / "examples" / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port for the whole test session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the session's Redis, flushed before each test that uses it."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, for tests that restart or kill it."""
    with RedisServer() as server:
        yield server
