"""Linear-ramp asset decisions per second per core: vectorized path vs per-asset path.

One asset decision = one asset's bid and/or offer for one tick. Both paths run in the same process,
on the same synthetic shard (loads, PVs, storages, smart meters with grid fees), one after the
other, single-threaded; the figure is the median over several repeats.

    .venv/bin/python bench/bench_strategies.py                      # 10 000 and 100 000 assets
    .venv/bin/python bench/bench_strategies.py --sizes 1000 --repeats 3 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from gridfleet.strategies.base import AssetStrategy
from gridfleet.strategies.builtin import LinearRamp, LinearRampPerAsset
from gridfleet.strategies.context import AssetBatch, TickContext

RESULTS = Path(__file__).resolve().parent / "results" / "strategies.json"


def synthetic_shard(n: int, seed: int = 0) -> AssetBatch:
    """``n`` assets: 45 % loads, 35 % PVs, 15 % storages, 5 % smart meters."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=n, p=[0.45, 0.35, 0.15, 0.05]).astype(np.int8)
    zeros = np.zeros(n)
    return AssetBatch(
        uuid=[f"asset-{i:06d}" for i in range(n)],
        name=[f"Asset {i}" for i in range(n)],
        aggregator=[f"agg-{i % 100}" for i in range(n)],
        parent_market=[f"House {i // 8}" for i in range(n)],
        kind=kind,
        energy_requirement_kwh=np.where((kind == 0) | (kind == 3), rng.exponential(0.1, n), 0.0),
        available_energy_kwh=np.where((kind == 1) | (kind == 3), rng.exponential(0.1, n), 0.0),
        energy_to_buy_kwh=np.where(kind == 2, rng.exponential(0.5, n), 0.0),
        energy_to_sell_kwh=np.where(kind == 2, rng.exponential(0.5, n), 0.0),
        used_storage_kwh=zeros,
        free_storage_kwh=zeros,
        grid_fee=rng.choice([0.0, 2.0, 4.0, 8.0], size=n),
        unsettled_deviation_kwh=[],
    )


def time_once(strategy: AssetStrategy, ctx: TickContext, shard: AssetBatch) -> float:
    start = time.perf_counter()
    result = strategy.evaluate(ctx, shard, {})
    elapsed = time.perf_counter() - start
    # Touch the result so nothing is lazily skipped.
    assert len(result.orders) + len(result.commands) > 0
    return elapsed


def measure(strategy: AssetStrategy, shard: AssetBatch, repeats: int) -> dict[str, float]:
    ticks = [
        TickContext("2024-06-01T12:00", "2024-06-01T12:15", t, 10, t == 0, 10.0, 30.0)
        for t in range(10)
    ]
    time_once(strategy, ticks[3], shard)  # warm-up
    times = [time_once(strategy, ticks[i % 10], shard) for i in range(repeats)]
    median = statistics.median(times)
    return {
        "repeats": repeats,
        "median_s": round(median, 6),
        "min_s": round(min(times), 6),
        "decisions_per_s": round(len(shard) / median),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=15, help="repeats on the vectorized path")
    parser.add_argument(
        "--per-asset-repeats", type=int, default=5, help="repeats on the (slow) per-asset path"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]

    rows = []
    for n in args.sizes:
        shard = synthetic_shard(n)
        vectorized = measure(LinearRamp(), shard, args.repeats)
        per_asset = measure(LinearRampPerAsset(), shard, args.per_asset_repeats)
        row = {
            "assets": n,
            "vectorized": vectorized,
            "per_asset": per_asset,
            "speedup": round(vectorized["decisions_per_s"] / per_asset["decisions_per_s"], 1),
        }
        rows.append(row)
        print(
            f"{n:>7} assets  vectorized {vectorized['decisions_per_s']:>12,} /s "
            f"({vectorized['median_s'] * 1e3:.2f} ms)   per-asset "
            f"{per_asset['decisions_per_s']:>10,} /s ({per_asset['median_s'] * 1e3:.1f} ms)"
        )

    report = {
        "benchmark": "linear_ramp asset decisions per second, one core",
        "command": " ".join([".venv/bin/python", "bench/bench_strategies.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), "
        f"load average {load_at_start:.2f} at start",
        "target_vectorized_decisions_per_s": 1_000_000,
        "results": rows,
    }
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
