"""The ledger's write path alone: one slot end's trade records of a 100 000-asset fleet (1 000
aggregators' trade records, 54 trades each) turned into rows and written in one transaction,
with nothing else running.

    .venv/bin/python -m bench.bench_ledger_write

For PostgreSQL (a private cluster on loopback) it compares, in the same run, COPY into a staging
table (what the ledger does from :data:`gridfleet.ledger.store.COPY_MIN_ROWS` rows) with one
executemany of INSERT ... ON CONFLICT DO NOTHING (what it does below that, and on SQLite).
Every write is of new trades (a fresh batch each repeat); the last line writes a batch again,
the cost of a redelivery. Results: ``bench/results/ledger_write.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench._util import write_results
from gridfleet.ledger import store
from gridfleet.ledger.rows import Rows, to_rows
from gridfleet.runtime.postgres_server import PostgresServer

RUN = {"run_id": "bench", "namespace": "gf", "started_at": 0.0, "started_by": "bench"}


def slot_end(aggregators: int, trades_each: int) -> list[tuple[str, Mapping[str, Any]]]:
    """Trade records as the ingress writes them at a slot end (fresh trade ids every call)."""
    out = []
    for a in range(aggregators):
        items = [
            [str(uuid.uuid4()), str(uuid.uuid4()), "buy", 0.5, 12.0, 0.1, str(uuid.uuid4()),
             "spot", "2026-01-01T00:15:00"]
            for _ in range(trades_each)
        ]  # fmt: skip
        record = {"kind": "trade", "aggregator": f"agg-{a}", "slot": "2026-01-01T00:00"}
        out.append((f"{a + 1}-0", {**record, "items": items}))
    return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(url: str, copy: bool, aggregators: int, trades_each: int, repeats: int) -> dict:
    engine = store.open_ledger(url)
    store.COPY_MIN_ROWS = 500 if copy else 10**12
    convert, write = [], []
    rows = Rows()
    for _ in range(repeats):
        records = slot_end(aggregators, trades_each)
        t0 = time.perf_counter()
        rows = to_rows("bench", records, time.time())
        convert.append(time.perf_counter() - t0)
        write.append(timed(lambda: store.write(engine, RUN, rows)))  # noqa: B023
    again = timed(lambda: store.write(engine, RUN, rows))
    engine.dispose()
    return {
        "rows": len(rows),
        "to_rows_s": round(statistics.median(convert), 3),
        "write_s": round(statistics.median(write), 3),
        "write_s_min": round(min(write), 3),
        "write_again_s": round(again, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aggregators", type=int, default=1000)
    parser.add_argument("--trades-each", type=int, default=54)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as pg:
        cases = [
            ("postgresql", "copy", pg.new_database("write_copy"), True),
            ("postgresql", "executemany", pg.new_database("write_many"), False),
            ("sqlite", "executemany", f"sqlite:///{Path(tmp) / 'ledger.sqlite'}", False),
        ]
        for db, how, url, copy in cases:
            got = measure(url, copy, args.aggregators, args.trades_each, args.repeats)
            rows.append({"db": db, "insert": how, **got})
            print(f"{db:<11} {how:<12} {got}")
    path = write_results(
        "ledger_write",
        {"aggregators": args.aggregators, "trades_each": args.trades_each, "rows": rows},
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
