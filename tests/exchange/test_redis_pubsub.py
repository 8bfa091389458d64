"""ExchangeLink against a real Redis server and a scripted exchange."""

from __future__ import annotations

import queue
import time
import uuid

import orjson
import pytest
import redis

from gridfleet.exchange import channels
from gridfleet.exchange.messages import BatchResponse, TickEvent, decode, decode_event
from gridfleet.exchange.redis_pubsub import ExchangeLink, PendingRequests
from gridfleet.runtime.redis_server import RedisServer
from tests.conftest import load_example
from tests.exchange.fake_exchange import FakeExchange

pytestmark = pytest.mark.integration


def test_create_register_select_event_batch_response(redis_url: str) -> None:
    assets = {f"H{i} Load": str(uuid.uuid4()) for i in range(2000)}
    exchange = FakeExchange(redis_url, assets).start_ready()
    try:
        with ExchangeLink(redis_url) as link:
            aggs = link.create_aggregators(["alpha", "beta"])
            assert set(aggs) == {"alpha", "beta"}
            uuids = link.register(assets)  # 2 000 registrations, pipelined
            assert uuids == assets
            first = list(assets.values())
            report = link.select(aggs["alpha"], first[:1500])
            assert len(report.selected) == 1500 and not report.errors
            report = link.select(aggs["beta"], first[1000:])
            assert len(report.selected) == 500 and len(report.errors) == 500
            assert all("already have selected" in m for m in report.errors.values())

            events: queue.SimpleQueue = queue.SimpleQueue()
            responses: queue.SimpleQueue = queue.SimpleQueue()
            link.subscribe_events(aggs.values(), lambda ch, raw, t: events.put((ch, raw)))
            link.subscribe_batch_responses(
                aggs.values(), lambda ch, raw, t: responses.put((ch, raw))
            )

            tick = load_example("05_event_tick")["data"]
            exchange.redis.publish(channels.aggregator_events(aggs["alpha"]), orjson.dumps(tick))
            ch, raw = events.get(timeout=5)
            assert channels.aggregator_of(ch) == aggs["alpha"]
            assert isinstance(decode_event(raw), TickEvent)

            commands = orjson.dumps(
                {
                    first[0]: [
                        {"type": "bid", "energy": 0.01, "price": 0.3, "replace_existing": True}
                    ]
                }
            )
            tid, body = link.batch_message(aggs["alpha"], commands)
            assert orjson.loads(body) == {
                "type": "BATCHED",
                "transaction_id": tid,
                "aggregator_uuid": aggs["alpha"],
                "batch_commands": orjson.loads(commands),
            }
            assert link.publish_batches([body]) == 1
            ch, raw = responses.get(timeout=5)
            answer = decode(raw, BatchResponse)
            assert answer.transaction_id == tid and answer.responses[first[0]][0].ok
    finally:
        exchange.stop()


def test_event_reader_survives_a_redis_restart(private_redis: RedisServer) -> None:
    reconnected: list[str] = []
    with ExchangeLink(private_redis.url, on_reconnect=reconnected.append) as link:
        got: queue.SimpleQueue = queue.SimpleQueue()
        link.subscribe_events(["agg-1"], lambda ch, raw, t: got.put(raw))
        pub = redis.Redis.from_url(private_redis.url)
        pub.publish(channels.aggregator_events("agg-1"), b'{"event": "finish"}')
        assert got.get(timeout=5) == b'{"event": "finish"}'

        private_redis.restart(down_for=0.3)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            # Pub/sub is at-most-once: keep publishing until the resubscribed reader hears one.
            if redis.Redis.from_url(private_redis.url).publish(
                channels.aggregator_events("agg-1"), b'{"event": "finish"}'
            ):
                break
            time.sleep(0.1)
        assert got.get(timeout=5) == b'{"event": "finish"}'
        assert link.reconnects >= 1 and reconnected


def test_pending_requests_are_bounded() -> None:
    pending = PendingRequests(capacity=3)
    for i in range(5):
        pending.add(str(i))
    assert len(pending) == 3 and pending.evicted == 2
    assert not pending.resolve("0", "late answer")
    assert pending.resolve("4", "answer")
