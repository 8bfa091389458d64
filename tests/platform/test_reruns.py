"""Runs follow each other on one broker: two ``gridfleet run``s in a row against two short
simulations of the embedded exchange both trade and both exit 0, each with its own counters.

The trade figures are the exchange's (its counts); the counters are the run's hash on the broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from sqlalchemy import func, select

from gridfleet.ledger import schema, store
from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.grid import assign_aggregators, generate_grid
from gridfleet.simulator.runner import SimConfig, Simulator
from tests.platform.harness import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def one_run(
    exchange_url: str, broker_url: str, fleet_file: Path, grid: Any, *flags: str
) -> dict[str, Any]:
    """A fresh simulation and one ``gridfleet run`` against it; what both sides said."""
    r = redis.Redis.from_url(broker_url)
    before = r.get("gf:run:current")
    sim = Simulator(grid, exchange_url, SimConfig(slots=3, tick_interval=0.5, paused=True))
    sim.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDFLEET_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gridfleet.cli",
            "run",
            "-c",
            str(fleet_file),
            "--workers",
            "1",
            *flags,
        ],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        # Until this run's ingress joined its run and holds the lease: the fleet is subscribed.
        while r.get("gf:run:current") in (None, before) or not r.exists("gf:lease:ingress:p0"):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the fleet did not come up"
            time.sleep(0.1)
        time.sleep(1.0)  # the coordinator and the worker
        sim.resume()
        assert sim.wait(120), "the simulation did not finish"
        out, _ = proc.communicate(timeout=90)
        report = sim.report()
        trades = sim.counts.trades
        energy = sim.counts.energy_traded_kwh
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sim.stop()
    run_id = r.get("gf:run:current").decode()  # type: ignore[union-attr]
    counters = {k.decode(): v.decode() for k, v in r.hgetall(f"gf:run:{run_id}:counters").items()}
    return {
        "code": proc.returncode,
        "output": out,
        "run": run_id,
        "report": report,
        "trades": trades,
        "energy": energy,
        "counters": counters,
    }


def test_two_runs_in_a_row_on_one_broker_both_trade_and_exit_0(tmp_path: Path) -> None:
    grid = generate_grid(300, houses_size=10, seed=3)
    assignment = assign_aggregators(grid, 3)
    with RedisServer() as exchange, RedisServer() as broker:
        fleet_file = tmp_path / "fleet.yaml"
        fleet_file.write_text(
            yaml.safe_dump(
                {
                    "exchange": {"url": exchange.url},
                    "broker": {"url": broker.url},
                    "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite'}"},
                    "aggregators": [
                        {"name": n, "assets": e["assets"]} for n, e in assignment.items()
                    ],
                }
            )
        )
        first = one_run(exchange.url, broker.url, fleet_file, grid)
        second = one_run(exchange.url, broker.url, fleet_file, grid)

    for run in (first, second):
        assert run["code"] == 0, run["output"][-3000:]
        assert run["trades"] > 0, run["report"]["meta"]
        assert run["counters"].get("finished") == "1"
        summary = run["report"]["summary"]
        assert summary["on_time"] > 0, summary
        # The run's counters are its own: no more rounds than its exchange sent.
        assert 0 < int(run["counters"]["rounds"]) <= summary["rounds"]
    assert first["run"] != second["run"]
    # `gridfleet run` wrote both runs into the ledger before it exited: every trade the exchange
    # matched, once (a trade between two of the fleet's assets is a row per side)
    engine = store.open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    listed = {r.run_id: r for r in store.list_runs(engine)}
    assert set(listed) == {first["run"], second["run"]}
    t = schema.trades
    for run in (first, second):
        assert listed[run["run"]].finished
        with engine.connect() as conn:
            per_trade = conn.execute(
                select(t.c.trade_id, func.max(t.c.energy_kwh))
                .where(t.c.run_id == run["run"])
                .group_by(t.c.trade_id)
            ).all()
        assert len(per_trade) == run["trades"]
        assert sum(e for _, e in per_trade) == pytest.approx(run["energy"])
        assert listed[run["run"]].rounds == int(run["counters"]["rounds"])
    # Before run ids, the second run stopped after ~3 s on the first run's finished flag.
    assert second["report"]["summary"]["on_time"] >= 0.8 * first["report"]["summary"]["on_time"]


def test_run_with_standby_trades_and_exits_0(tmp_path: Path) -> None:
    """``gridfleet run --standby``: a second ingress and coordinator beside the first; the run
    is the same as without them (one batch per aggregator and round, as the exchange saw)."""
    grid = generate_grid(300, houses_size=10, seed=3)
    assignment = assign_aggregators(grid, 3)
    with RedisServer() as exchange, RedisServer() as broker:
        fleet_file = tmp_path / "fleet.yaml"
        fleet_file.write_text(
            yaml.safe_dump(
                {
                    "exchange": {"url": exchange.url},
                    "broker": {"url": broker.url},
                    "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite'}"},
                    "aggregators": [
                        {"name": n, "assets": e["assets"]} for n, e in assignment.items()
                    ],
                }
            )
        )
        run = one_run(exchange.url, broker.url, fleet_file, grid, "--standby")
    assert run["code"] == 0, run["output"][-3000:]
    assert run["trades"] > 0
    summary = run["report"]["summary"]
    assert summary["on_time"] > 0 and summary["unattributed_batches"] == 0, summary
    assert run["counters"].get("fenced_rounds", "0") == "0"  # no round was fenced off
    # Each round answered once: the exchange received no more batches than rounds x aggregators.
    assert int(run["counters"]["batches"]) <= summary["aggregator_rounds"]
