"""The fleet pipeline end to end: real Redis, the embedded exchange, real Celery worker processes.

The on-time figures are the exchange's own (its deadline report), not the client's.
"""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.parser import text_string_to_metric_families

from gridfleet.platform.local_loop import replay_rounds
from gridfleet.platform.shard import Runtime
from gridfleet.platform.shard_inputs import REFERENCE
from gridfleet.runtime.redis_server import RedisServer, free_port
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
    while fleet.coordinator.tally.rounds_published < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fleet.coordinator.tally.rounds_published >= n


def _scrape(port: int) -> dict[str, Family]:
    """The metric families a real ``/metrics`` endpoint serves, by name."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: f for f in text_string_to_metric_families(body)}


def _value(families: dict[str, Family], name: str) -> float:
    """The value of an unlabelled counter (``name`` without ``_total``) or gauge."""
    (sample,) = [s for s in families[name].samples if not s.name.endswith("_created")]
    return sample.value


def test_fleet_of_20_aggregators_is_on_time_and_matches_one_process(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    worker_port = free_port()
    with running_fleet(
        exchange.url,
        broker.url,
        assets=2000,
        aggregators=20,
        slots=3,
        worker_metrics_port=worker_port,
        shard_inputs="shared-memory",  # what auto picks here (a loopback broker)
    ) as (fleet, _workers):
        report = fleet.wait()
        assert _inputs_by_reference(fleet) == {True}
        servers = [
            n.metrics.serve(free_port(), host="127.0.0.1")
            for n in (fleet.ingress, fleet.coordinator)
        ]
        try:
            ingress_m, coordinator_m = (_scrape(srv.server_address[1]) for srv in servers)
        finally:
            for srv in servers:
                srv.shutdown()
        worker_m = _scrape(worker_port)
    s = _summary(report)
    # 2 slots with trees (the first slot's ticks carry none, as at gsy-e) x 10 rounds x 20 aggregators
    assert s["aggregator_rounds"] == 400
    # every round answered on time, or idle: nothing left to trade and (as gsy-e wants) no batch
    assert s["on_time"] + s["idle"] == 400 and s["late"] == 0 and s["missing"] == 0

    # Prometheus, scraped from the running processes: the conventional names, the process's own
    # metrics, and no histogram (no series at all) per aggregator.
    for families in (ingress_m, coordinator_m, worker_m):
        assert "process_cpu_seconds" in families and "process_resident_memory_bytes" in families
        for family in families.values():
            for sample in family.samples:
                assert "aggregator" not in sample.labels, (family.name, sample)
    for families in (ingress_m, coordinator_m):
        assert "python_gc_collections" in families
        assert "gridfleet_event_to_batch_seconds" not in families
        assert "gridfleet_shard_seconds" not in families
    latency = coordinator_m["gridfleet_event_to_batch_duration_seconds"]
    assert latency.type == "histogram"
    count = [x for x in latency.samples if x.name.endswith("_count")]
    assert [x.value for x in count] == [20.0]  # once per round with trees, for all aggregators
    assert coordinator_m["gridfleet_shard_duration_seconds"].type == "histogram"
    assert _value(coordinator_m, "gridfleet_batches") == 400
    # The workers' pool processes, summed by the worker's main process: every shard ingress
    # sent ran on a worker unless the coordinator hedged it, and each asset once per round.
    sent = _value(ingress_m, "gridfleet_shards")
    hedged = fleet.coordinator.tally.hedged_shards
    ran = _value(worker_m, "gridfleet_worker_shards")
    assert sent == 20 * 4  # 2000 assets in shards of 500, 20 rounds with trees
    assert ran <= sent <= ran + hedged
    assets = _value(worker_m, "gridfleet_worker_assets_evaluated")
    if hedged == 0:
        assert assets == 2000 * 20
    else:  # a hedged shard's assets may have been evaluated by the coordinator alone
        assert 2000 * 20 - hedged * 500 <= assets <= 2000 * 20
    durations = worker_m["gridfleet_worker_shard_duration_seconds"]
    assert [x.value for x in durations.samples if x.name.endswith("_count")] == [ran]
    assert _value(worker_m, "gridfleet_worker_strategy_errors") == 0
    assert _value(worker_m, "gridfleet_worker_commands_refused") == 0

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
    assert fleet.coordinator.tally.hedged_shards > 0, (
        "with every worker dead, shards must have been hedged"
    )
    # Exactly one batch per aggregator per round the exchange sent it, and no asset twice.
    per_agg = report["aggregators"]
    for agg, batches in fleet.recorder.batches.items():
        # an idle round (nothing to trade) has no batch: gridfleet sends no empty one
        assert len(batches) == per_agg[agg]["on_time"], agg
        assert per_agg[agg]["on_time"] + per_agg[agg]["idle"] == 20, agg
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
    assert fleet.ingress.tally.broker_outages >= 1 and fleet.ingress.tally.lost_rounds >= 1, (
        "the outage must be counted"
    )
    # The last slot is entirely after the restart: every round of it on time again.
    last = [r for r in rows if r["market_slot"] == rows[-1]["market_slot"]]
    assert len(last) == 10
    assert all(r["on_time"] + r["idle"] == r["aggregators"] for r in last), last


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


def test_batches_go_out_in_waves_and_split_aggregators_get_one_whole_batch(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    """Shards of 335 assets with aggregators of 330 and 340: the first fit in one shard and go
    out with it, the others are split over two and wait for the last wave; either way each
    aggregator gets one batch per round, the same as one process computes."""
    exchange, broker = two_redis
    with running_fleet(
        exchange.url,
        broker.url,
        assets=2000,
        aggregators=6,
        slots=3,
        shard_size=335,
        shard_inputs="redis",  # the other test of the kind keeps them in shared memory
    ) as (fleet, _workers):
        sends: list[int] = []
        send = fleet.coordinator.link.send_batches

        def counting(batches: Iterator) -> int:  # type: ignore[type-arg]
            listed = list(batches)
            sends.append(len(listed))
            return send(listed)

        fleet.coordinator.link.send_batches = counting  # type: ignore[method-assign]
        report = fleet.wait()
        rounds = fleet.coordinator.tally.rounds_published
        assert _inputs_by_reference(fleet) == {False}
    s = _summary(report)
    assert (
        s["late"] == 0 and s["missing"] == 0 and s["on_time"] + s["idle"] == s["aggregator_rounds"]
    )
    assert len(sends) > rounds, "every round went out in one send: no waves"
    assert fleet.ingress.fleet is not None
    expected = replay_rounds(
        fleet.ingress.fleet, Runtime(fleet.ingress.fleet.spec), fleet.recorder.events
    )
    split = [a for a in fleet.assignment.values() if len(a["assets"]) > 335]
    assert split, "no aggregator is split over shards: the test proves nothing"
    for agg, bodies in expected.items():
        sent = [b["batch_commands"] for b in fleet.recorder.batches[agg]]
        assert sent == [orjson.loads(b) for b in bodies if b != b"{}"], agg


def _inputs_by_reference(fleet: Fleet) -> set[bool]:
    """Whether the shard inputs on the broker are references into shared memory (True) or the
    trees themselves (False), over every input still there."""
    broker = fleet.ingress.broker
    stored = [broker.get(k) for k in broker.scan_iter(match=f"{fleet.ingress.keys.ns}:r:*:in:*")]
    assert stored and all(raw is not None for raw in stored)
    return {bytes(raw).startswith(REFERENCE) for raw in stored if raw is not None}
