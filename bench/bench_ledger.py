"""Ledger lag: how long a record waits on the broker before the ledger writer has committed it,
with the whole pipeline trading at 1 s ticks, and whether the fleet stays on its deadlines.

    .venv/bin/python -m bench.bench_ledger                                 # 10 000 assets
    .venv/bin/python -m bench.bench_ledger --sizes 10000 100000 --dbs postgresql

For each fleet size and each database (``none``: no writer, the baseline in the same run;
``sqlite``: a file; ``postgresql``: a private cluster on loopback) the embedded exchange runs in
this process, and ``gridfleet ingress``, ``coordinator``, ``worker -c 2`` and ``ledger`` run as
processes of their own. The lag is the writer's own figure (``gridfleet ledger --stats-file``):
for every committed batch, commit time minus the time the batch's oldest entry was added to the
stream. The deadline figures are the exchange's. Results: ``bench/results/ledger.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import orjson
import yaml
from sqlalchemy import func, select

from bench._util import RESULTS, write_results
from bench.bench_pipeline import AGGREGATORS, cpu_by_component
from gridfleet.ledger import schema, store
from gridfleet.platform.runs import new_run_id
from gridfleet.runtime.interpreter import favour_reader_threads
from gridfleet.runtime.postgres_server import PostgresServer
from gridfleet.runtime.processes import ProcessGroup, gridfleet_command
from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.grid import assign_aggregators, generate_grid
from gridfleet.simulator.runner import SimConfig, Simulator


def run_case(
    assets: int,
    db: str,
    slots: int,
    tick_interval: float,
    workdir: Path,
    postgres: PostgresServer | None,
) -> dict[str, Any]:
    aggregators = AGGREGATORS.get(assets, max(1, assets // 100))
    grid = generate_grid(assets, houses_size=10, seed=1)
    assignment = assign_aggregators(grid, aggregators)
    case_dir = workdir / f"{assets}-{db}"
    case_dir.mkdir(parents=True, exist_ok=True)
    ledger_url = None
    if db == "sqlite":
        (case_dir / "ledger.sqlite").unlink(missing_ok=True)
        ledger_url = f"sqlite:///{case_dir / 'ledger.sqlite'}"
    elif db == "postgresql":
        assert postgres is not None
        ledger_url = postgres.new_database(f"bench_{assets}")
    fleet_file = case_dir / "fleet.yaml"
    fleet_file.write_text(
        yaml.safe_dump(
            {
                "exchange": {"url_env": "GRIDFLEET_EXCHANGE_URL"},
                "broker": {"url_env": "GRIDFLEET_BROKER_URL"},
                "shard_size": max(500, assets // 8),
                "aggregators": [{"name": n, "assets": e["assets"]} for n, e in assignment.items()],
            }
        )
    )
    stats_file = case_dir / "ledger-stats.json"
    stats_file.unlink(missing_ok=True)
    run = ["--run-id", new_run_id()]
    with RedisServer() as exchange, RedisServer() as broker:
        sim = Simulator(
            grid,
            exchange.url,
            SimConfig(slots=slots, tick_interval=tick_interval, tree="pruned", paused=True),
        ).start()
        env = {
            "GRIDFLEET_EXCHANGE_URL": exchange.url,
            "GRIDFLEET_BROKER_URL": broker.url,
            "GRIDFLEET_CONFIG": str(fleet_file),
            "GRIDFLEET_LOG_FORMAT": "text",
            **({"GRIDFLEET_LEDGER_URL": ledger_url} if ledger_url else {}),
        }
        group = ProcessGroup(log_dir=case_dir / "logs")
        base = gridfleet_command()
        quiet = ["--log-level", "WARNING"]
        try:
            group.start(
                "worker", [*base, "worker", "--concurrency", "2", "--loglevel", "ERROR"], env
            )
            group.start(
                "coordinator", [*base, "coordinator", "--metrics-port", "0", *quiet, *run], env
            )
            group.start("ingress", [*base, "ingress", "--metrics-port", "0", *quiet, *run], env)
            if ledger_url:
                group.start(
                    "ledger", [*base, "ledger", *quiet, *run, "--stats-file", str(stats_file)], env
                )
            t0 = time.monotonic()
            while sum(len(v) for v in sim.registry.selected.values()) < assets:
                if time.monotonic() - t0 > 600 or group.dead():
                    raise RuntimeError(f"client did not select the fleet; see {case_dir / 'logs'}")
                time.sleep(0.2)
            time.sleep(3.0)  # Celery's pool is up and warm
            components = {c.name: c.process.pid for c in group.children if c.process}
            cpu_before, wall_before = cpu_by_component(components), time.monotonic()
            sim.resume()
            if not sim.wait(timeout=slots * 10 * tick_interval * 4 + 120):
                raise RuntimeError("the simulation did not finish")
            cpu_after, wall = cpu_by_component(components), time.monotonic() - wall_before
            report = sim.report()
            counts = sim.counts
            if ledger_url:
                writer = next(c for c in group.children if c.name == "ledger")
                assert writer.process is not None
                writer.process.wait(timeout=300)  # it exits once the run is written
        finally:
            group.stop()
            sim.stop()
    s = report["summary"]
    row: dict[str, Any] = {
        "assets": assets,
        "aggregators": aggregators,
        "db": db,
        "on_time_ratio": s["on_time_ratio"],
        "latency_ms": s["first_batch_ms"],
        "exchange_trades": counts.trades,
        "cores_used": {
            name: round((cpu_after[name] - cpu_before[name]) / wall, 2) for name in components
        },
    }
    if ledger_url:
        stats = orjson.loads(stats_file.read_bytes())
        engine = store.open_ledger(ledger_url)
        with engine.connect() as conn:
            t = schema.trades
            ledgered = conn.execute(select(func.count(func.distinct(t.c.trade_id)))).scalar_one()
        engine.dispose()
        row.update(
            {
                "ledger_lag_s": stats["lag_s"],
                "ledger_batches": stats["batches"],
                "ledger_rows": stats["rows"],
                "ledger_trades": ledgered,
            }
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument(
        "--dbs", nargs="+", default=["none", "sqlite", "postgresql"],
        choices=["none", "sqlite", "postgresql"],
    )  # fmt: skip
    ap.add_argument("--slots", type=int, default=3)
    ap.add_argument("--tick-interval", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gridfleet-bench-ledger"))
    ap.add_argument(
        "--merge", action="store_true", help="replace only these cases in the existing results"
    )
    args = ap.parse_args()
    favour_reader_threads()
    rows = []
    postgres = PostgresServer().start() if "postgresql" in args.dbs else None
    try:
        for assets in args.sizes:
            for db in args.dbs:
                row = run_case(assets, db, args.slots, args.tick_interval, args.workdir, postgres)
                rows.append(row)
                lat, lag = row["latency_ms"], row.get("ledger_lag_s")
                print(
                    f"{assets:>7} {db:10}: on time {100 * (row['on_time_ratio'] or 0):5.1f} %  "
                    f"p99 {lat['p99']} ms"
                    + (
                        f"  ledger lag p50 {lag['p50']} s p99 {lag['p99']} s max {lag['max']} s;"
                        f" {row['ledger_trades']} of {row['exchange_trades']} trades"
                        if lag
                        else ""
                    )
                    + "  cores: "
                    + ", ".join(f"{k} {v}" for k, v in row["cores_used"].items()),
                    flush=True,
                )
    finally:
        if postgres is not None:
            postgres.stop()
    if args.merge and (RESULTS / "ledger.json").exists():
        done = {(r["assets"], r["db"]) for r in rows}
        kept = orjson.loads((RESULTS / "ledger.json").read_bytes())["rows"]
        rows = sorted(
            [r for r in kept if (r["assets"], r["db"]) not in done] + rows,
            key=lambda r: (r["assets"], r["db"]),
        )
    path = write_results(
        "ledger",
        {"tick_interval_s": args.tick_interval, "cpus": os.cpu_count(), "rows": rows},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
