"""REST + websocket against Redis pub/sub: the same fleet, the same exchange, one run.

    .venv/bin/python -m bench.bench_rest                       # 1 000 and 10 000 assets
    .venv/bin/python -m bench.bench_rest --sizes 1000 --slots 2

For each size the embedded exchange runs in this process and the pipeline (ingress, coordinator,
``gridfleet worker -c 2``) in others, once over the exchange's Redis door and once over its REST
door (JWT login, a websocket per aggregator for the ingress and one for the coordinator, one
``POST batch-commands/`` per aggregator and round). The cases alternate within one run, so the
ratio is measured under the same machine load. Figures are the exchange's deadline report.
``setup_s`` runs from starting the processes to the exchange holding every selection (for REST:
login, aggregators, sockets, registry, every select and its ``selected_by_device``).

Results: ``bench/results/rest_vs_redis.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench._util import write_results
from bench.bench_pipeline import AGGREGATORS, run_case
from gridfleet.runtime.interpreter import favour_reader_threads

TRANSPORTS = ("redis", "rest")


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 2)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    ap.add_argument(
        "--slots", type=int, default=3, help="market slots (the first is the exchange's warm-up)"
    )
    ap.add_argument("--tick-interval", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gridfleet-bench-rest"))
    args = ap.parse_args()
    favour_reader_threads()
    rows: list[dict[str, Any]] = []
    for assets in args.sizes:
        for transport in TRANSPORTS:
            row = run_case(
                assets,
                AGGREGATORS.get(assets, max(1, assets // 100)),
                "pruned",
                "pipeline",
                args.slots,
                args.tick_interval,
                args.workdir,
                transport=transport,
            )
            rows.append(row)
            lat = row["latency_ms"]
            print(
                f"{assets:>7} {transport:5}: on time {100 * (row['on_time_ratio'] or 0):5.1f} %"
                f"  p50 {lat['p50']} ms  p99 {lat['p99']} ms  max {lat['max']} ms"
                f"  set-up {row['setup_s']} s",
                flush=True,
            )
    comparison = {}
    for assets in args.sizes:
        by = {r["transport"]: r for r in rows if r["assets"] == assets}
        if len(by) == len(TRANSPORTS):
            rest, red = by["rest"]["latency_ms"], by["redis"]["latency_ms"]
            comparison[str(assets)] = {
                "rest_on_time_ratio": by["rest"]["on_time_ratio"],
                "redis_on_time_ratio": by["redis"]["on_time_ratio"],
                "p50_rest_over_redis": ratio(rest["p50"], red["p50"]),
                "p99_rest_over_redis": ratio(rest["p99"], red["p99"]),
                "rest_setup_s": by["rest"]["setup_s"],
            }
            print(f"{assets:>7} rest/redis: {comparison[str(assets)]}", flush=True)
    path = write_results(
        "rest_vs_redis",
        {"tick_interval_s": args.tick_interval, "rows": rows, "rest_over_redis": comparison},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
