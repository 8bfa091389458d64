"""No process is a single point of failure for more than a round: kill -9 of the active
coordinator (and, separately, the active ingress) with a standby running.

Every figure is the exchange's side: its deadline report (rounds with aggregators missing) and
a Recorder of the batch channel (batches per aggregator and round tag, as the exchange received
them).
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridfleet.runtime.redis_server import RedisServer
from tests.platform.harness import Fleet, kill_group, running_fleet, start_ingress

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TICK_S = 1.0
RUN_LINE = re.compile(r"(started|joined) run (\d{8}T\d{6}Z-[0-9a-f]{6})")


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as exchange, RedisServer() as broker:
        yield exchange, broker


def answered_twice(fleet: Fleet) -> dict[tuple[str, str], int]:
    """(aggregator, round tag) the exchange received more than one batch for."""
    seen: Counter[tuple[str, str]] = Counter()
    for agg, bodies in fleet.recorder.batches.items():
        for body in bodies:
            tag = body["transaction_id"].rsplit("/", 1)[0]  # <slot>/<n>%/<uuid>
            seen[(agg, tag)] += 1
    return {k: n for k, n in seen.items() if n > 1}


def rounds_with_missing(report: dict, since: float) -> list[dict]:
    return [r for r in report["ticks"] if r["sent_at"] >= since and r["missing"]]


def lost_rows(report: dict, killed_at: float) -> list[dict]:
    return rounds_with_missing(report, killed_at - TICK_S)


def wait_rounds(fleet: Fleet, n: int, timeout: float = 60) -> None:
    """Until the exchange has sent ``n`` rounds with trees that were answered."""
    deadline = time.monotonic() + timeout
    while sum(1 for r in fleet.sim.report()["ticks"] if r["on_time"]) < n:
        assert time.monotonic() < deadline, "the fleet never got going"
        time.sleep(0.05)


def test_a_standby_coordinator_takes_over_within_a_round(
    two_redis: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    exchange, broker = two_redis
    with running_fleet(
        exchange.url,
        broker.url,
        assets=400,
        aggregators=4,
        slots=4,
        tick_interval=TICK_S,
        ingress_process=tmp_path,
        coordinator_processes=2,
    ) as (fleet, _workers):
        wait_rounds(fleet, 4)
        active = fleet.wait_lease("coordinator")
        (victim,) = [p for p in fleet.coordinator_procs if p.pid == active]
        kill_group(victim, signal.SIGKILL)
        killed_at = time.time()
        successor = fleet.wait_lease("coordinator", timeout=5, other_than=active)
        took_over_s = time.time() - killed_at
        report = fleet.wait()
        twice = answered_twice(fleet)

    print(
        f"coordinator takeover: {took_over_s:.2f} s, rounds with missing: {len(lost_rows(report, killed_at))}"
    )
    assert successor != active
    after = [r for r in report["ticks"] if r["sent_at"] >= killed_at and r["aggregators"]]
    assert len(after) >= 5, "the run ended too soon after the kill to judge it"
    lost = rounds_with_missing(report, killed_at - TICK_S)
    assert len(lost) <= 1, (lost, took_over_s)
    assert twice == {}
    for row in after[2:]:
        assert row["on_time"] + row["idle"] == row["aggregators"], row
    standby_log = next(
        (tmp_path / f"coordinator-{i}.log").read_text()
        for i, p in enumerate(fleet.coordinator_procs)
        if p.pid == successor
    )
    assert "coordinator lease taken" in standby_log


def test_a_standby_ingress_takes_over_within_a_round(
    two_redis: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    exchange, broker = two_redis
    with running_fleet(
        exchange.url,
        broker.url,
        assets=400,
        aggregators=4,
        slots=4,
        tick_interval=TICK_S,
        ingress_process=tmp_path,
    ) as (fleet, _workers):
        standby = start_ingress(tmp_path / "fleet.yaml", tmp_path / "ingress-standby.log")
        try:
            wait_rounds(fleet, 4)
            assert fleet.wait_lease("ingress:p0") == fleet.ingress_proc.pid
            deadline = time.monotonic() + 30
            while "standing by" not in (tmp_path / "ingress-standby.log").read_text():
                assert time.monotonic() < deadline, "the standby ingress never came up"
                time.sleep(0.1)
            kill_group(fleet.ingress_proc, signal.SIGKILL)
            killed_at = time.time()
            assert (
                fleet.wait_lease("ingress:p0", timeout=5, other_than=fleet.ingress_proc.pid)
                == standby.pid
            )
            report = fleet.wait()
            twice = answered_twice(fleet)
            run_ids = {
                name: RUN_LINE.findall((tmp_path / name).read_text())
                for name in ("ingress.log", "ingress-standby.log")
            }
        finally:
            kill_group(standby, signal.SIGTERM)

    # The standby joined the run the active one started.
    assert run_ids["ingress.log"][0][0] == "started", run_ids
    assert run_ids["ingress-standby.log"] == [("joined", run_ids["ingress.log"][0][1])], run_ids
    after = [r for r in report["ticks"] if r["sent_at"] >= killed_at and r["aggregators"]]
    assert len(after) >= 5, "the run ended too soon after the kill to judge it"
    lost = rounds_with_missing(report, killed_at - TICK_S)
    assert len(lost) <= 1, lost
    assert twice == {}
    for row in after[2:]:
        assert row["on_time"] + row["idle"] == row["aggregators"], row
    assert "ingress lease taken" in (tmp_path / "ingress-standby.log").read_text()
