"""The fleet pipeline end to end: real Redis, the embedded exchange, real Celery worker processes.

The on-time figures are the exchange's own (its deadline report), not the client's.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import orjson
import pytest

from gridfleet.platform.local_loop import replay_rounds
from gridfleet.platform.shard import Runtime
from gridfleet.runtime.redis_server import RedisServer
from tests.platform.harness import Fleet, kill_group, running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    """The exchange's Redis and the broker's, separate as in production."""
    with RedisServer() as exchange, RedisServer() as broker:
        yield exchange, broker


def _summary(report: dict) -> dict:
    return report["summary"]


def _wait_for_rounds(fleet: Fleet, n: int, timeout: float = 60) -> None:
    """Until the coordinator has published ``n`` rounds (the first slot's ticks carry no tree)."""
    deadline = time.monotonic() + timeout
    while len(fleet.coordinator.outcomes) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fleet.coordinator.outcomes) >= n


def test_fleet_of_20_aggregators_is_on_time_and_matches_one_process(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    with running_fleet(exchange.url, broker.url, assets=2000, aggregators=20, slots=3) as (
        fleet,
        _workers,
    ):
        report = fleet.wait()
    s = _summary(report)
    # 2 slots with trees (the first slot's ticks carry none, as at gsy-e) x 10 rounds x 20 aggregators
    assert s["aggregator_rounds"] == 400
    # every round answered on time, or idle: nothing left to trade and (as gsy-e wants) no batch
    assert s["on_time"] + s["idle"] == 400 and s["late"] == 0 and s["missing"] == 0

    # Determinism across shards: the same events evaluated in one process give the same batches.
    assert fleet.ingress.fleet is not None
    expected = replay_rounds(
        fleet.ingress.fleet, Runtime(fleet.ingress.fleet.spec), fleet.recorder.events
    )
    assert set(expected) == set(fleet.recorder.batches)
    for agg, bodies in expected.items():
        sent = [b["batch_commands"] for b in fleet.recorder.batches[agg]]
        # an empty body ({}: nothing to say) is never put on the wire (gsy-e does not answer it)
        assert sent == [orjson.loads(b) for b in bodies if b != b"{}"], (
            f"aggregator {agg} differs from the one-process evaluation"
        )
    assert sum(len(b) for b in expected.values()) == 400


def test_killing_the_workers_costs_no_tick_and_sends_nothing_twice(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    with running_fleet(exchange.url, broker.url, assets=1000, aggregators=10, slots=3) as (
        fleet,
        workers,
    ):
        _wait_for_rounds(fleet, 4)  # then kill -9 every worker process
        kill_group(workers, signal.SIGKILL)
        report = fleet.wait()
    s = _summary(report)
    assert s["missing"] == 0 and s["late"] == 0, s
    assert sum(o.hedged for o in fleet.coordinator.outcomes) > 0, (
        "with every worker dead, shards must have been hedged"
    )
    # Exactly one batch per aggregator per round the exchange sent it, and no asset twice.
    per_agg = report["aggregators"]
    for agg, batches in fleet.recorder.batches.items():
        assert len(batches) == per_agg[agg]["on_time"] == 20, agg
        for body in batches:
            # A shard evaluated twice (worker and hedge) would show as a second bid or offer for
            # the same asset in the same batch (a storage has one of each).
            for cmds in body["batch_commands"].values():
                kinds = [c["type"] for c in cmds]
                assert len(kinds) == len(set(kinds)), (agg, cmds)


def test_pipeline_recovers_from_a_broker_restart(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    with running_fleet(exchange.url, broker.url, assets=1000, aggregators=10, slots=4) as (
        fleet,
        _workers,
    ):
        _wait_for_rounds(fleet, 4)
        broker.restart(down_for=1.0)
        report = fleet.wait()
    rows = report["ticks"]
    assert fleet.ingress.broker_outages >= 1 and fleet.ingress.lost_rounds >= 1, (
        "the outage must be counted"
    )
    # The last slot is entirely after the restart: every round of it on time again.
    last = [r for r in rows if r["market_slot"] == rows[-1]["market_slot"]]
    assert len(last) == 10
    assert all(r["on_time"] == r["aggregators"] for r in last), last


def test_two_ingress_processes_split_the_aggregators(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    with running_fleet(
        exchange.url, broker.url, assets=1000, aggregators=10, slots=2, partitions=2
    ) as (fleet, _workers):
        report = fleet.wait()
    halves = [set(n.fleet.aggregator_uuid.values()) for n in fleet.ingresses if n.fleet]
    assert len(halves) == 2 and len(halves[0]) == len(halves[1]) == 5 and not halves[0] & halves[1]
    s = _summary(report)
    assert s["aggregator_rounds"] == 100 and s["on_time"] + s["idle"] == 100, s
    assert s["missing"] == 0, s
