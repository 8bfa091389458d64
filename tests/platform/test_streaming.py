"""Ingress sends a round's full shards while its events still arrive, the rest when it closes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis

from gridfleet.config import parse_config
from gridfleet.platform.codec import unpackb
from gridfleet.platform.collector import RoundCollector
from gridfleet.platform.ingress import Ingress
from gridfleet.platform.keys import Keys
from gridfleet.platform.shard import DONE_DROPPED, DONE_FINAL, Manifest, stored_input
from tests.conftest import load_example

pytestmark = pytest.mark.integration

AGGS = [f"agg-{i}" for i in range(4)]
TICK = {**load_example("05_event_tick")["data"], "slot_completion": "10%"}


class RecordingDispatcher:
    """Stands in for Celery: records which shard numbers were sent for which round."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[int]]] = []

    def send(self, namespace: str, round_id: str, shards: Any, expires_at: float) -> None:
        self.sent.append((round_id, list(shards)))

    def close(self) -> None:
        pass


@pytest.fixture
def ingress(redis_url: str) -> Iterator[tuple[Ingress, RecordingDispatcher]]:
    """An ingress of four one-asset aggregators, two to a shard, sending to a recorder."""
    config = parse_config(
        {
            "exchange": {"url": redis_url},
            "broker": {"url": redis_url},
            "shard_size": 2,
            "aggregators": [{"name": a, "assets": [f"asset of {a}"]} for a in AGGS],
        }
    )
    node = Ingress(config, redis_url, redis_url)
    dispatcher = RecordingDispatcher()
    node.dispatcher = dispatcher  # type: ignore[assignment]
    node.fleet = SimpleNamespace(aggregator_uuid={a: a for a in AGGS})  # type: ignore[assignment]
    node._sizes = dict.fromkeys(AGGS, 1)  # one asset each: two aggregators per shard
    node._order = {a: i for i, a in enumerate(AGGS)}
    yield node, dispatcher
    node.close()


def test_full_shards_go_out_before_the_round_is_complete(
    redis_url: str, ingress: tuple[Ingress, RecordingDispatcher]
) -> None:
    node, dispatcher = ingress
    config = node.config
    collector = RoundCollector(AGGS, window_s=10)

    def arrive(agg: str) -> None:
        raw = orjson.dumps(TICK)
        node._take(collector, agg, raw, time.monotonic(), 0.0)

    for agg in AGGS[:3]:
        arrive(agg)
    (pending,) = collector.pending.values()
    node._stream(pending)
    # agg-0 and agg-1 fill shard 0; agg-2's shard could still grow, so it waits
    assert [numbers for _, numbers in dispatcher.sent] == [[0]]
    # ...and the coordinator is told now, with the manifest of what is out so far
    r = redis.Redis.from_url(redis_url)
    keys = Keys(config.namespace)
    round_id = dispatcher.sent[0][0]
    assert r.lrange(keys.rounds, 0, -1) == [round_id.encode()]
    early = Manifest.unpack(r.get(keys.manifest(round_id)))  # type: ignore[arg-type]
    assert not early.final and early.shards == 1
    arrive(AGGS[3])
    (pending,) = collector.ready()
    node._dispatch(pending)
    assert [numbers for _, numbers in dispatcher.sent] == [[0], [1]]

    manifest = Manifest.unpack(r.get(keys.manifest(round_id)))  # type: ignore[arg-type]
    assert manifest.final and manifest.shards == 2 and manifest.aggregators == AGGS
    assert r.lrange(keys.rounds, 0, -1) == [round_id.encode()]  # announced once
    assert r.lrange(keys.done(round_id), 0, -1) == [str(DONE_FINAL).encode()]
    inputs = [stored_input(r, keys, round_id, s) for s in range(2)]
    parts = [shard.aggregators for shard in inputs if shard is not None]
    assert parts == [AGGS[:2], AGGS[2:]]  # every tree exactly once
    assert inputs[0] is not None
    assert orjson.loads(inputs[0].parts[0].tree) == TICK["grid_tree"]
    assert unpackb(r.get(keys.manifest(round_id)))["ctx"]["tick_index"] == 1  # type: ignore[arg-type]


def test_a_streamed_round_dropped_for_a_newer_one_is_marked_for_the_coordinator(
    redis_url: str, ingress: tuple[Ingress, RecordingDispatcher]
) -> None:
    node, dispatcher = ingress
    config = node.config
    collector = RoundCollector(AGGS, window_s=10)
    for agg in AGGS[:3]:
        node._take(collector, agg, orjson.dumps(TICK), time.monotonic(), 0.0)
    (old,) = collector.pending.values()
    node._stream(old)
    round_id = dispatcher.sent[0][0]
    newer = {**TICK, "slot_completion": "20%"}
    for agg in AGGS:
        node._take(collector, agg, orjson.dumps(newer), time.monotonic(), 0.0)
    ready = collector.ready(now=time.monotonic() + 60)
    assert [p.key.tick_index for p in node._newest_only(ready)] == [2]
    r = redis.Redis.from_url(redis_url)
    done = r.lrange(Keys(config.namespace).done(round_id), 0, -1)
    assert done == [str(DONE_DROPPED).encode()]
