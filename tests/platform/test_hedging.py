"""When the coordinator runs a shard itself: a stalled worker's, not a busy one's."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from gridfleet.config import parse_config
from gridfleet.platform.coordinator import STALL_FLOOR_S, Coordinator, _Waves
from gridfleet.platform.keys import Keys
from gridfleet.platform.shard import (
    DONE_DROPPED,
    DONE_FINAL,
    Manifest,
    claim_shard,
    claimed_at,
    mark_done,
)
from tests.strategies.helpers import ctx

pytestmark = pytest.mark.integration

ROUND = "run-1:2024-06-01T00:15#3"


class HedgeLog(Coordinator):
    hedges: list[tuple[int, str]]
    waves: list[list[int]]


@pytest.fixture
def coordinator(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[HedgeLog]:
    """A coordinator whose hedge only reports itself done (the shard's work is not the point)."""
    config = parse_config(
        {
            "exchange": {"url": redis_url},
            "broker": {"url": redis_url},
            "aggregators": [{"name": "a", "assets": ["Load 1 L13"]}],
        }
    )
    node = HedgeLog(config, redis_url, redis_url)
    node.hedges = []

    def hedge(round_id: str, shard: int, why: str) -> None:
        node.hedges.append((shard, why))
        node.broker.rpush(node.keys.done(round_id), shard)

    monkeypatch.setattr(node, "_hedge", hedge)
    node.waves = []

    def wave(round_id: str, waves: _Waves, shards: set[int], *, last: bool = False) -> None:
        waves.shards.update(shards)
        if shards:
            node.waves.append(sorted(shards))

    monkeypatch.setattr(node, "_publish_wave", wave)
    yield node
    node.close()


def manifest(shards: int, deadline: float) -> Manifest:
    now = time.time()
    return Manifest(ROUND, ctx(), "v1", shards, ["agg"], received_at=now - 0.5, deadline=deadline)


def test_claims_carry_their_time(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    node_keys = Keys("gf")
    before = time.time()
    assert claim_shard(r, node_keys, ROUND, 0, "worker-1")
    assert not claim_shard(r, node_keys, ROUND, 0, "worker-2")
    at = claimed_at(r, node_keys, ROUND, [0, 1])
    assert set(at) == {0} and before - 0.01 <= at[0] <= time.time() + 0.01


def test_a_shard_started_moments_ago_is_waited_for_not_hedged(coordinator: HedgeLog) -> None:
    """Past the last call, but its worker claimed it 50 ms ago: it finishes, nothing is run twice."""
    coordinator._shard_seconds.extend([0.4] * 10)  # stalled after 1.2 s: room for a slow CI
    m = manifest(1, deadline=time.time())  # the last call has passed
    claim_shard(coordinator.broker, coordinator.keys, ROUND, 0, "worker-1")
    done_key = coordinator.keys.done(ROUND)
    finisher = threading.Timer(0.05, lambda: coordinator.broker.rpush(done_key, 0))
    finisher.start()
    done: set[int] = set()
    t0 = time.monotonic()
    coordinator._await_running(ROUND, m, done_key, done, [], _Waves("tag"))
    finisher.join()
    assert done == {0}
    assert coordinator.hedges == []
    assert time.monotonic() - t0 < coordinator._stall_after()  # not waited out: it finished


def test_a_stalled_worker_s_shard_is_hedged_at_the_last_call(coordinator: HedgeLog) -> None:
    """Claimed 5 s ago and not done at the last call: its worker is taken for dead."""
    coordinator._shard_seconds.extend([0.4] * 10)  # a fresh claim is stalled after 1.2 s
    m = manifest(2, deadline=time.time() + 0.1)  # last call in 0.025 s
    keys = coordinator.keys
    coordinator.broker.set(keys.claim(ROUND, 0), f"worker-1 {time.time() - 5:.3f}")
    claim_shard(coordinator.broker, keys, ROUND, 1, "worker-2")  # now: still healthy
    done_key = keys.done(ROUND)
    finisher = threading.Timer(0.12, lambda: coordinator.broker.rpush(done_key, 1))
    finisher.start()
    done: set[int] = set()
    coordinator._await_running(ROUND, m, done_key, done, [], _Waves("tag"))
    finisher.join()
    assert done == {0, 1}
    assert coordinator.hedges == [(0, "its worker had not finished")]


def test_a_busy_worker_is_hedged_once_it_runs_past_a_few_shard_times(
    coordinator: HedgeLog,
) -> None:
    """Shards take 20 ms: a worker still on one after 3 x that (but past the floor) is stalled."""
    coordinator._shard_seconds.extend([0.02] * 20)
    assert coordinator._stall_after() == STALL_FLOOR_S  # 3 x 20 ms is under the floor
    coordinator._shard_seconds.extend([0.1] * 200)
    assert coordinator._stall_after() == pytest.approx(0.3)
    m = manifest(1, deadline=time.time())
    claim_shard(coordinator.broker, coordinator.keys, ROUND, 0, "worker-1")
    done: set[int] = set()
    t0 = time.monotonic()
    coordinator._await_running(ROUND, m, coordinator.keys.done(ROUND), done, [], _Waves("tag"))
    waited = time.monotonic() - t0
    assert done == {0}
    assert coordinator.hedges == [(0, "its worker had not finished")]
    assert 0.25 <= waited <= 1.0


def test_an_open_round_s_early_shards_go_out_before_its_manifest_is_final(
    coordinator: HedgeLog,
) -> None:
    """Announced at its first shards: each goes out when done; the final manifest is taken
    when ingress marks it (shard 1, sent with it, goes out after)."""
    keys, r = coordinator.keys, coordinator.broker
    early = manifest(1, deadline=time.time() + 5)
    early.final = False
    r.set(keys.manifest(ROUND), early.pack())
    r.rpush(keys.done(ROUND), 0)  # a worker finished the early shard

    def ingress_closes_the_round() -> None:
        final = manifest(2, deadline=early.deadline)
        r.set(keys.manifest(ROUND), final.pack())
        mark_done(r, keys, ROUND, DONE_FINAL)
        r.rpush(keys.done(ROUND), 1)

    closer = threading.Timer(0.2, ingress_closes_the_round)
    closer.start()
    done: set[int] = set()
    waves = _Waves("tag")
    got = coordinator._follow_open_round(ROUND, early, done, waves, until=time.time() + 3)
    closer.join()
    assert got is not None and got.final and got.shards == 2
    assert coordinator.waves[0] == [0]  # out before the round closed
    coordinator._await_running(ROUND, got, keys.done(ROUND), done, [], waves)
    assert done == {0, 1} and coordinator.hedges == []


def test_an_open_round_ingress_drops_is_left(coordinator: HedgeLog) -> None:
    keys, r = coordinator.keys, coordinator.broker
    early = manifest(1, deadline=time.time() + 5)
    early.final = False
    r.set(keys.manifest(ROUND), early.pack())
    mark_done(r, keys, ROUND, DONE_DROPPED)
    got = coordinator._follow_open_round(ROUND, early, set(), _Waves("tag"), time.time() + 3)
    assert got is None and coordinator.waves == []
