"""Hostile or broken input from the exchange's side, into a running fleet: counted, logged, and
the rest of the fleet stays on time (the exchange's own deadline report says so)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import orjson
import pytest
import redis

from gridfleet.exchange import channels
from gridfleet.runtime.redis_server import RedisServer
from tests.conftest import load_example
from tests.platform.harness import running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


GSY_E_PUBSUB_LIMIT = ["--client-output-buffer-limit", "pubsub", "32mb", "8mb", "60"]
"""Redis's default pub/sub limit, as a gsy-e run has it (gridfleet's own Redis raises it)."""


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer(extra_args=GSY_E_PUBSUB_LIMIT) as exchange, RedisServer() as broker:
        yield exchange, broker


def test_a_50_mb_message_and_a_far_future_tick_cost_only_their_own_aggregators(
    two_redis: tuple[RedisServer, RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    exchange, broker = two_redis
    with (
        caplog.at_level(logging.WARNING),
        running_fleet(
            exchange.url, broker.url, assets=1000, aggregators=20, slots=4, tick_interval=0.5
        ) as (fleet, _workers),
    ):
        deadline = time.monotonic() + 30
        while fleet.coordinator.tally.rounds_published < 12:  # into the second traded slot
            assert time.monotonic() < deadline, "the fleet never got going"
            time.sleep(0.02)
        readers = fleet.ingress.link._event_readers  # type: ignore[attr-defined]
        victim_reader = readers[0]
        victims = {channels.aggregator_of(c) for c in victim_reader._channels}
        victim = sorted(victims)[0]
        others = set(fleet.ingress.fleet.aggregator_uuid.values()) - victims
        stray = sorted(others)[0]
        pub = redis.Redis.from_url(exchange.url)
        # Redis's pubsub output buffer limit is 32 MB: this drops the reader carrying `victim`.
        pub.publish(channels.aggregator_events(victim), b"{" + b" " * (50 << 20) + b"}")
        far = {**load_example("05_event_tick")["data"], "market_slot": "2099-01-01T00:00"}
        pub.publish(channels.aggregator_events(stray), orjson.dumps(far))
        report = fleet.wait()
        counters = redis.Redis.from_url(broker.url).hgetall(fleet.ingress.keys.counters)

    # The rest of the fleet: every one of its rounds on time, before and after.
    per_agg = report["aggregators"]
    for agg in others:
        assert per_agg[agg]["missing"] == 0 and per_agg[agg]["late"] == 0, per_agg[agg]
    # The dropped reader's aggregators lost at most the round that was in flight.
    assert all(per_agg[a]["missing"] + per_agg[a]["late"] <= 1 for a in victims)
    # Counted and logged, with the channels and the reason.
    assert victim_reader.reconnects >= 1
    lost = [r.getMessage() for r in caplog.records if "lost Redis" in r.getMessage()]
    assert lost and "client-output-buffer-limit" in lost[0]
    assert counters[b"foreign_slot_events"] == b"1"
    far_lines = [r.getMessage() for r in caplog.records if "2099-01-01T00:00" in r.getMessage()]
    assert far_lines and stray in far_lines[0]
