"""Operating a fleet: processes die and come back; the exchange's side tells what it cost.

Every figure here is the embedded exchange's (its deadline report and its aggregator registry),
not the client's own.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gridfleet.runtime.redis_server import RedisServer
from tests.platform.harness import kill_group, running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as exchange, RedisServer() as broker:
        yield exchange, broker


def _rounds_after(report: dict, t: float) -> list[dict]:
    return [row for row in report["ticks"] if row["sent_at"] >= t and row["aggregators"]]


def test_ingress_killed_and_restarted_reuses_its_aggregators(
    two_redis: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    """kill -9 of the ingress mid-run, then a new one: same aggregators, same selections, on
    time again within two ticks of its coming back."""
    exchange, broker = two_redis
    with running_fleet(
        exchange.url,
        broker.url,
        assets=600,
        aggregators=6,
        slots=5,
        tick_interval=0.5,
        ingress_process=tmp_path,
    ) as (fleet, _workers):
        registry = fleet.sim.registry
        aggregators_before = dict(registry.aggregators)
        owners_before = dict(registry.owner)
        assert len(aggregators_before) == 6 and len(owners_before) == 600

        # Into the second slot (the first slot's ticks carry no tree), then kill -9.
        deadline = time.monotonic() + 30
        while fleet.coordinator.tally.rounds_published < 4:
            assert time.monotonic() < deadline, "the fleet never got going"
            time.sleep(0.05)
        kill_group(fleet.ingress_proc, signal.SIGKILL)
        killed_at = time.time()
        redis.Redis.from_url(broker.url).delete(f"{fleet.config.namespace}:fleet")
        time.sleep(1.0)  # two ticks with no ingress at all

        fleet.start_ingress_process()
        fleet.wait_fleet_published()
        back_at = time.time()
        report = fleet.wait()

    # The exchange saw no new aggregator and lost no selection.
    assert registry.aggregators == aggregators_before
    assert registry.owner == owners_before

    # While no ingress ran, rounds went unanswered (the exchange counts them)...
    down = [r for r in report["ticks"] if killed_at + 0.5 <= r["sent_at"] < back_at]
    assert down and sum(r["missing"] for r in down) > 0
    # ...and from the third round after it came back, every aggregator is answered on time.
    after = _rounds_after(report, back_at)
    assert len(after) >= 5, "the run ended too soon after the restart to judge it"
    for row in after[2:]:
        assert row["on_time"] + row["idle"] == row["aggregators"], row
    log = (tmp_path / "ingress.log").read_text()
    assert "6 reused from an earlier run" in log
    assert "600 of 600 assets" in log
    # The restarted ingress joined the run the first one started, not a new one.
    runs = re.findall(r"(started|joined) run (\d{8}T\d{6}Z-[0-9a-f]{6})", log)
    assert [how for how, _ in runs] == ["started", "joined"], runs
    assert runs[0][1] == runs[1][1]
