"""The Redis pub/sub transport of the exchange link, against a real Redis server and a scripted exchange."""

from __future__ import annotations

import logging
import queue
import time
import uuid

import orjson
import pytest
import redis

from gridfleet.exchange import channels
from gridfleet.exchange.link import (
    AggregatorRequest,
    OutgoingBatch,
    aggregator_identity,
    open_link,
)
from gridfleet.exchange.messages import BatchResponse, TickEvent, decode, decode_event
from gridfleet.exchange.redis_pubsub import PendingRequests, RedisPubSubLink, readers_for
from gridfleet.runtime.redis_server import RedisServer
from tests.conftest import load_example
from tests.exchange.fake_exchange import FakeExchange

pytestmark = pytest.mark.integration


def test_create_register_select_event_batch_response(redis_url: str) -> None:
    assets = {f"H{i} Load": str(uuid.uuid4()) for i in range(2000)}
    exchange = FakeExchange(redis_url, assets).start_ready()
    try:
        with RedisPubSubLink(redis_url) as link:
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
            link.subscribe_events(aggs.values(), lambda agg, raw, t: events.put((agg, raw)))
            link.subscribe_answers(aggs.values(), lambda agg, raw, t: responses.put((agg, raw)))

            tick = load_example("05_event_tick")["data"]
            exchange.redis.publish(channels.aggregator_events(aggs["alpha"]), orjson.dumps(tick))
            agg, raw = events.get(timeout=5)
            assert agg == aggs["alpha"]
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
            agg, raw = responses.get(timeout=5)
            answer = decode(raw, BatchResponse)
            assert agg == aggs["alpha"]
            assert answer.transaction_id == tid and answer.responses[first[0]][0].ok
    finally:
        exchange.stop()


def test_event_reader_survives_a_redis_restart(private_redis: RedisServer) -> None:
    reconnected: list[str] = []
    with RedisPubSubLink(private_redis.url, on_reconnect=reconnected.append) as link:
        got: queue.SimpleQueue = queue.SimpleQueue()
        link.subscribe_events(["agg-1"], lambda agg, raw, t: got.put(raw))
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


def test_bring_up_and_send_batches_through_the_link_interface(redis_url: str) -> None:
    """What the fleet services use: ``open_link`` -> bring_up -> send_batches -> answers."""
    assets = {f"H{i} Load": str(uuid.uuid4()) for i in range(40)}
    exchange = FakeExchange(redis_url, assets).start_ready()
    names = list(assets)
    try:
        link = open_link(redis_url)
        assert isinstance(link, RedisPubSubLink)
        try:
            up = link.bring_up(
                [AggregatorRequest("alpha", names[:30]), AggregatorRequest("beta", names[20:])]
            )
            assert set(up.aggregator_uuid) == {"alpha", "beta"}
            assert up.asset_uuid == assets
            # beta asked for ten assets alpha already holds: named, not silently dropped
            assert set(up.selection_errors) == {assets[n] for n in names[20:30]}
            assert all("held by another aggregator" in m for m in up.selection_errors.values())
            answers: queue.SimpleQueue = queue.SimpleQueue()
            alpha = up.aggregator_uuid["alpha"]
            link.subscribe_answers([alpha], lambda agg, raw, t: answers.put((agg, raw)))
            commands = orjson.dumps(
                {assets[names[0]]: [{"type": "bid", "energy": 0.01, "price": 0.3}]}
            )
            assert link.send_batches([OutgoingBatch(alpha, "tid-1", commands)]) == 1
            agg, raw = answers.get(timeout=5)
            assert agg == alpha and decode(raw, BatchResponse).transaction_id == "tid-1"
        finally:
            link.close()
    finally:
        exchange.stop()


def test_open_link_names_an_unknown_transport() -> None:
    with pytest.raises(ValueError, match="no exchange transport for 'ftp'"):
        open_link("ftp://example")


def test_a_second_bring_up_of_the_same_fleet_reuses_its_aggregators(redis_url: str) -> None:
    """A restarted ingress (or a rerun) must find the aggregators and selections it made."""
    assets = {f"H{i} Load": str(uuid.uuid4()) for i in range(10)}
    exchange = FakeExchange(redis_url, assets).start_ready()
    wanted = [
        AggregatorRequest("north", list(assets)[:6]),
        AggregatorRequest("south", list(assets)[6:]),
    ]
    try:
        first = open_link(redis_url)
        try:
            up1 = first.bring_up(wanted, fleet_id="fleet-a")
        finally:
            first.close()
        assert up1.reused == [] and not up1.failures()
        second = open_link(redis_url)  # a new process: nothing remembered but the fleet id
        try:
            up2 = second.bring_up(wanted, fleet_id="fleet-a")
        finally:
            second.close()
        assert up2.aggregator_uuid == up1.aggregator_uuid
        assert sorted(up2.reused) == ["north", "south"]
        assert not up2.failures()  # "already have selected <itself>" is success
        assert up1.aggregator_uuid["north"] == aggregator_identity("fleet-a", "north")
        assert aggregator_identity("fleet-b", "north") != aggregator_identity("fleet-a", "north")
    finally:
        exchange.stop()


def test_what_does_not_register_is_named_with_a_hint(redis_url: str) -> None:
    assets = {"H1 Load": str(uuid.uuid4()), "H1 PV": str(uuid.uuid4())}
    exchange = FakeExchange(redis_url, assets, silent={"H1 PV", "house-2"}).start_ready()
    try:
        link = open_link(redis_url)
        try:
            up = link.bring_up(
                [AggregatorRequest("a", ["H1 Load", "H1 PV"], ["House 2"])],
                timeout=1.0,
                fleet_id="f",
            )
        finally:
            link.close()
        assert list(up.asset_uuid) == ["H1 Load"]
        assert set(up.failures()) == {"H1 PV", "House 2"}
        assert "external_connection_available" in up.failures()["House 2"]
    finally:
        exchange.stop()


def test_an_oversized_event_is_counted_and_dropped_and_the_reader_goes_on(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Where Redis lets a huge message through, the link drops it unparsed, named."""
    admin = redis.Redis.from_url(private_redis.url)
    admin.config_set("client-output-buffer-limit", "pubsub 0 0 0")
    with RedisPubSubLink(private_redis.url, max_message_bytes=1 << 20) as link:
        got: queue.SimpleQueue = queue.SimpleQueue()
        link.subscribe_events(["agg-1"], lambda agg, raw, t: got.put(raw))
        with caplog.at_level(logging.ERROR):
            admin.publish(channels.aggregator_events("agg-1"), b"x" * (2 << 20))
            admin.publish(channels.aggregator_events("agg-1"), b'{"event": "finish"}')
            assert got.get(timeout=5) == b'{"event": "finish"}'
        assert link.oversized == 1 and got.empty()
        (line,) = [r.getMessage() for r in caplog.records if "dropped unparsed" in r.getMessage()]
        assert channels.aggregator_events("agg-1") in line and "2.1 MB" in line


def test_event_channels_are_spread_so_one_drop_costs_few_aggregators() -> None:
    assert readers_for(1) == 4  # _spread opens no more readers than channels
    assert readers_for(20) == 4
    assert readers_for(1000) == 63  # 16 aggregators a reader
    assert readers_for(100_000) == 64


def test_an_empty_batch_never_reaches_the_wire(redis_url: str) -> None:
    """gsy-e never answers a batch without commands, so the link does not send one: only the
    batch with commands is published (a subscriber on the batch channel sees exactly one)."""
    link = RedisPubSubLink(redis_url)
    ps = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    ps.subscribe(channels.batch_commands())
    try:
        assert ps.get_message(timeout=1) is None  # the subscribe confirmation, ignored
        empty = OutgoingBatch("agg-idle", "tid-empty", b"{}")
        full = OutgoingBatch("agg-busy", "tid-full", b'{"a":[{"type":"device_info"}]}')
        assert empty.empty and not full.empty
        assert link.send_batches([empty, full]) == 1
        assert link.send_batches([empty]) == 0
        seen = []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            msg = ps.get_message(timeout=0.1)
            if msg is not None:
                seen.append(orjson.loads(msg["data"]))
        assert [b["transaction_id"] for b in seen] == ["tid-full"]
    finally:
        ps.close()
        link.close()
