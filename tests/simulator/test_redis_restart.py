"""The embedded exchange survives its Redis restarting, with a whole fleet trading on it.

Fault: the exchange's own redis-server is stopped mid-run and started again on the same port
(its data gone, as after a crash). The exchange keeps its clock and state; the rounds it
dispatched while Redis was down are counted as a delivery gap and are missing for every
aggregator; the run completes, and the fleet trades again afterwards.
"""

from __future__ import annotations

import time

import pytest

from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.standalone import summary_line
from tests.platform.harness import running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_exchange_redis_restarted_mid_run_is_a_counted_gap(private_redis: RedisServer) -> None:
    with (
        RedisServer() as broker,
        running_fleet(
            private_redis.url, broker.url, assets=400, aggregators=4, slots=4, tick_interval=0.5
        ) as (fleet, _workers),
    ):
        sim = fleet.sim
        deadline = time.monotonic() + 60
        while fleet.coordinator.tally.rounds_published < 3:  # trading in the second slot
            assert time.monotonic() < deadline, "the fleet never got going"
            time.sleep(0.05)
        registry_before = dict(sim.registry.aggregators), dict(sim.registry.owner)
        fleet.recorder.halt.set()  # the harness's wire recorder does not outlive a restart
        fleet.recorder.join(timeout=2)
        down_at = time.time()
        private_redis.restart(down_for=1.6)
        back_at = time.time()
        report = fleet.wait(timeout=120)
        assert sim.error is None, sim.error

    # The engine kept its state: the same aggregators and selections, and the whole run.
    assert (dict(sim.registry.aggregators), dict(sim.registry.owner)) == registry_before
    s = report["summary"]
    assert report["meta"]["counts"]["rounds"] == 40, "the clock ran through the outage"
    assert len(report["ticks"]) == 30

    # One gap, inside the outage, with the rounds it cost; those rounds missing for everyone.
    assert len(s["gaps"]) == 1, s["gaps"]
    gap = s["gaps"][0]
    assert down_at - 0.1 <= gap["start"] <= back_at and gap["end"] >= back_at - 0.1, gap
    assert gap["rounds"] >= 2 and s["undelivered_rounds"] == gap["rounds"], gap
    undelivered = [t for t in report["ticks"] if not t["delivered"]]
    assert len(undelivered) == gap["rounds"]
    assert all(t["missing"] == t["aggregators"] == 4 for t in undelivered), undelivered
    assert s["missing"] >= 4 * gap["rounds"]

    # After the outage the fleet trades again: the last slot's rounds are answered.
    after = [t for t in report["ticks"] if t["sent_at"] > gap["end"] + 3.0]
    assert after and all(t["on_time"] + t["idle"] == 4 for t in after), after
    line = summary_line(report, None)
    assert f"undelivered {gap['rounds']} rounds in 1 gap(s)" in line, line
