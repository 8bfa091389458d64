"""Settlement end to end: forecasts and measurements through the pipeline, deviations traded down.

Real Redis (exchange and broker), the embedded exchange with settlement markets on, ingress,
coordinator and real Celery workers. Every aggregator runs ``composite``: ``forecast`` (per-asset
CSV profiles: a forecast for the next slot, a measurement for the current one), ``linear_ramp``
in the spot market, then ``settlement`` on the deviations the exchange reports. Profiled loads
and PVs measure 30 % above or below their forecast, so each gets a deviation of either sign; the
other assets get the exchange's simulated measurements. The run's report must count settlement
trades and energy apart from spot, the fleet telling them apart by the ids of its settlement
orders (a trade event looks the same for both markets).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from gridfleet.report.model import build_report
from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.grid import LOAD, PV
from gridfleet.simulator.settlement import ORDER_ID_PREFIX
from tests.platform.harness import running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ASSETS, AGGREGATORS, SLOTS = 200, 4, 4
FORECAST_KWH = 0.2


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as exchange, RedisServer() as broker:
        yield exchange, broker


def write_profiles(directory: Path, names: list[str]) -> dict[str, float]:
    """A daily profile per asset (every 15 minutes: forecast, measurement); the measurement is
    30 % above the forecast for every other asset and 30 % below for the rest. Returns each
    asset's measurement."""
    directory.mkdir()
    measured = {}
    for i, name in enumerate(names):
        m = FORECAST_KWH * (1.3 if i % 2 else 0.7)
        measured[name] = m
        rows = [f"{h:02d}:{q:02d},{FORECAST_KWH},{m}" for h in range(24) for q in (0, 15, 30, 45)]
        (directory / f"{name}.csv").write_text("time,forecast,measurement\n" + "\n".join(rows))
    return measured


def test_forecast_driven_assets_get_deviations_and_the_settlement_strategy_trades_them_down(
    two_redis: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    exchange, broker = two_redis
    from gridfleet.simulator.grid import generate_grid

    grid = generate_grid(ASSETS, houses_size=10, seed=7)  # the harness's grid
    profiled = [
        n for n, k in zip(grid.asset_name, grid.kind.tolist(), strict=True) if k in (LOAD, PV)
    ][::2]
    measured = write_profiles(tmp_path / "profiles", profiled)
    strategy = {
        "name": "composite",
        "params": {
            "strategies": [
                {"name": "forecast", "params": {"profile_dir": str(tmp_path / "profiles")}},
                {"name": "linear_ramp"},
                {"name": "settlement", "params": {"bid_rate": 26, "offer_rate": 14}},
            ]
        },
    }
    with running_fleet(
        exchange.url,
        broker.url,
        assets=ASSETS,
        aggregators=AGGREGATORS,
        slots=SLOTS,
        tick_interval=0.5,
        strategy=strategy,
        sim_options={"settlement": True},
    ) as (fleet, _workers):
        sim_report = fleet.wait()
        time.sleep(1.0)  # the last trade records
        state = fleet.sim.state
        settlement = state.settlement
        assert settlement is not None
        events = {agg: list(raws) for agg, raws in fleet.recorder.events.items()}
        keys = fleet.ingress.keys
        client = redis.Redis.from_url(broker.url)
        records = [orjson.loads(f[b"data"]) for _, f in client.xrange(keys.events)]
        counters = {k.decode(): v.decode() for k, v in client.hgetall(keys.counters).items()}
        rejected = fleet.coordinator.tally.commands_rejected_total
        sim_counts = fleet.sim.counts

    # 1. Deviations: every open settlement market shows measured - bought (load) or
    #    sold - measured (PV) for the profiled assets, from the measurements sent through the fleet.
    names = grid.asset_name
    checked = 0
    first = grid_start_label = "2024-06-01T00:00"  # the warm-up slot: its trees are empty, so
    # the fleet sent nothing then and the exchange simulated that slot's measurements
    assert grid_start_label in settlement.slots
    for label, slot in settlement.slots.items():
        if label == first:
            continue
        for name, m in measured.items():
            a = names.index(name)
            want = m - slot.bought[a] if grid.kind[a] == LOAD else slot.sold[a] - m
            assert slot.deviation[a] == pytest.approx(want, abs=1e-9), (label, name)
            checked += 1
    assert checked >= len(measured)
    assert rejected == 0

    # 2. The settlement strategy traded them down: both signs met in the market.
    assert sim_counts.settlement_trades > 0
    total_dev = sum(
        abs(float(s.deviation[names.index(n)]))
        for label, s in settlement.slots.items()
        if label != first
        for n in measured
    )
    left = sum(
        float(s.unsettled[names.index(n)])
        for label, s in settlement.slots.items()
        if label != first
        for n in measured
    )
    assert left < 0.8 * total_dev, (left, total_dev)

    # 3. The fleet told them apart from spot trades by order id, in records, counters, report.
    entries = [
        t
        for raws in events.values()
        for raw in raws
        if (ev := orjson.loads(raw))["event"] == "trade"
        for t in ev["trade_list"]
    ]

    def own_id(t: dict[str, Any]) -> str:
        return str(t["bid_id"] if t["seller"] == "anonymous" else t["offer_id"])

    settled = [t for t in entries if own_id(t).startswith(ORDER_ID_PREFIX)]
    spot = [t for t in entries if not own_id(t).startswith(ORDER_ID_PREFIX)]
    assert settled and spot
    fleet_settled = sum(int(r.get("settlement_trades", 0)) for r in records if r["kind"] == "trade")
    fleet_spot = sum(int(r["trades"]) for r in records if r["kind"] == "trade")
    assert (fleet_settled, fleet_spot) == (len(settled), len(spot))
    assert int(counters["settlement_trades"]) == len(settled)
    assert int(counters["trades"]) == len(spot)
    assert float(counters["settlement_energy_kwh"]) == pytest.approx(
        sum(t["traded_energy"] for t in settled)
    )

    report = build_report(
        sim_report=sim_report, records=records, counters=counters, meta={"tick_interval_s": 0.5}
    )
    s = report["settlement"]
    assert s["trades"] == sim_counts.settlement_trades and s["trades"] > 0
    assert s["energy_kwh"] == pytest.approx(sim_counts.settlement_energy_kwh)
    assert s["fleet_trades"] == len(settled)
    assert report["trades"] == sim_counts.trades  # spot only
    assert report["client"]["counters"]["settlement_trades"] == len(settled)
    assert sum(r["settlement_trades"] for r in report["per_slot"]) == len(settled)
    assert sum(a["settlement_trades"] for a in report["per_aggregator"]) == len(settled)
