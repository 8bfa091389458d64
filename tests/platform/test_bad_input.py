"""Bad input from outside is logged with context and skipped; the rest of the fleet goes on."""

from __future__ import annotations

import logging
import threading
import time

import orjson
import pytest
import redis

from gridfleet.config import parse_config
from gridfleet.exchange import channels
from gridfleet.platform.codec import unpackb
from gridfleet.platform.collector import RoundCollector
from gridfleet.platform.coordinator import Coordinator
from gridfleet.platform.ingress import Ingress
from gridfleet.platform.keys import Keys
from gridfleet.platform.runs import join_run
from tests.conftest import load_example

pytestmark = pytest.mark.integration


def config(url: str):  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "exchange": {"url": url},
            "broker": {"url": url},
            "aggregators": [{"name": "a", "assets": ["Load 1 L13"]}],
        }
    )


def test_a_malformed_event_is_skipped_and_counted(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Ingress reads headers only: an event that is not JSON is dropped there; a tree that is
    JSON but not a grid tree rides on to its shard, whose worker skips that aggregator alone
    (tests/pipeline/test_units.py::test_a_tree_that_does_not_parse_skips_only_its_aggregator)."""
    node = Ingress(config(redis_url), redis_url, redis_url)
    try:
        collector = RoundCollector(["agg-0", "agg-1", "agg-2"])
        head = b'{"event": "tick", "slot_completion": "10%", "market_slot": "2024-06-01T00:15", "feed_in_tariff_rate": 1, "market_maker_rate": 30, '
        not_json = head + b'"grid_tree": {"x": {"children": 3}'
        not_a_tree = head + b'"grid_tree": {"x": {"children": 3}}}'
        good = orjson.dumps({**load_example("05_event_tick")["data"], "slot_completion": "10%"})
        with caplog.at_level(logging.ERROR):
            for agg, raw in (("agg-0", not_json), ("agg-1", not_a_tree), ("agg-2", good)):
                node._take(collector, agg, raw, time.monotonic(), time.time())
        assert node.tally.bad_events == 1 and node.metrics.bad_events._value.get() == 1
        assert any(
            "agg-0" in r.getMessage() and "unusable event" in r.getMessage() for r in caplog.records
        )
        (rnd,) = collector.ready(now=time.monotonic() + 1)
        assert set(rnd.events) == {"agg-1", "agg-2"}  # the others' round goes ahead
    finally:
        node.close()


def test_batch_responses_record_rejections_and_skip_unknown_assets(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis.Redis.from_url(redis_url)
    r.hset(
        "gf:fleet",
        "p0",
        orjson.dumps(
            {
                "aggregators": {"agg-1": "alpha"},
                "assets": {"e5d98068-7d2f-4f29-a531-7b9bd21fb7bd": "H1 Load0"},
                "markets": {},
            }
        ),
    )
    node = Coordinator(config(redis_url), redis_url, redis_url)
    try:
        node.refresh_fleet()
        answer = load_example("07_batch_response_bid_energy_above_requirement")["data"]
        answer = {**answer, "aggregator_uuid": "agg-1"}
        answer["responses"]["00000000-unknown"] = [{"command": "bid", "status": "ready"}]
        with caplog.at_level(logging.WARNING):
            assert node.handle_response(orjson.dumps(answer)) == 1
            assert node.handle_response(b"{not json") == 0
        stored = unpackb(r.hget("gf:rejections", "e5d98068-7d2f-4f29-a531-7b9bd21fb7bd"))
        assert stored["command"] == "bid" and "Error when handling bid create" in stored["reason"]
        assert int(r.hget("gf:counters", "commands_rejected")) == 1
        messages = " ".join(rec.getMessage() for rec in caplog.records)
        assert "00000000-unknown" in messages and "H1 Load0" in messages and "alpha" in messages
    finally:
        node.close()


def test_dso_market_stats_answers_reach_the_market_state(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    market = "e60698e0-c0fa-447d-9c6e-8bde0439d451"
    r.hset(
        "gf:fleet",
        "p0",
        orjson.dumps({"aggregators": {"agg": "op"}, "assets": {}, "markets": {market: "House 2"}}),
    )
    node = Coordinator(config(redis_url), redis_url, redis_url)
    try:
        node.refresh_fleet()
        node.handle_response(
            orjson.dumps(
                load_example("07_batch_response_dso_market_stats-ready_grid_fees-ready")["data"]
            )
        )
        stats = unpackb(r.hget("gf:market-answers", market))
        assert stats["area_throughput"] == {"import": 0.0, "export": 0.0}
    finally:
        node.close()


def test_the_coordinator_hears_a_fleets_answers_before_its_first_round(redis_url: str) -> None:
    """Subscribing to the answer channels happens while no round waits, not in the first round
    (at 1 000 aggregators it took ~0.5 s of that round's budget)."""
    r = redis.Redis.from_url(redis_url)
    asset = "e5d98068-7d2f-4f29-a531-7b9bd21fb7bd"
    node = Coordinator(config(redis_url), redis_url, redis_url)
    join_run(r, Keys())
    worker = threading.Thread(target=node.run, daemon=True)
    worker.start()
    try:
        time.sleep(0.7)  # idle, no fleet yet: nothing to subscribe to
        assert node.tally.rounds_published == 0
        r.hset(
            "gf:fleet",
            "p0",
            orjson.dumps({"aggregators": {"agg-1": "alpha"}, "assets": {asset: "H1 Load0"}}),
        )
        answer = load_example("07_batch_response_bid_energy_above_requirement")["data"]
        answer = {**answer, "aggregator_uuid": "agg-1"}
        deadline = time.monotonic() + 5
        while r.hget("gf:rejections", asset) is None and time.monotonic() < deadline:
            # published until heard: the subscription is made between rounds, soon
            r.publish(channels.batch_response("agg-1"), orjson.dumps(answer))
            time.sleep(0.1)
        assert r.hget("gf:rejections", asset) is not None, "no answer heard before any round"
        assert node.tally.rounds_published == 0
    finally:
        node.stop_event.set()
        worker.join(5)
        node.close()
