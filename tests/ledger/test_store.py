"""The ledger database on SQLite and PostgreSQL: migrated on open, written idempotently, read
back as run summaries and trade exports; bad URLs are one clear error without the password."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from gridfleet.ledger import schema, store
from gridfleet.ledger.rows import to_rows

RUN = {
    "run_id": "r1",
    "namespace": "gf",
    "started_at": 10.0,
    "started_by": "h",
    "finished_at": None,
}


def trade(tid: str, asset: str, side: str, kwh: float, market: str = "spot") -> list[object]:
    return [
        tid,
        asset,
        side,
        kwh,
        10 * kwh,
        0.1,
        f"o-{tid}-{asset}",
        market,
        f"2024-06-01T00:1{tid[-1]}:00+00:00",
    ]


RECORDS = [
    ("1-0", {"kind": "round", "round": "2024-06-01T00:15/0", "slot": "2024-06-01T00:15", "tick": 0,
             "aggregators": 2, "shards": 1, "hedged": 0, "commands": 8, "refused": 1,
             "strategy_errors": 0, "latency_ms": 12.5, "budget_ms": 900.0, "on_time": True,
             "received_at": 1717200900.25,
             "outcomes": [["a", 0.0, 12.5, 8, 1, 0, "sent", True, "tx"],
                          ["b", None, None, 0, 0, 0, "missing", None, None]]}),
    ("2-0", {"kind": "trade", "aggregator": "a", "slot": "2024-06-01T00:15",
             "items": [trade("t1", "x", "buy", 0.5), trade("t2", "y", "sell", 0.25, "settlement")]}),
    ("2-1", {"kind": "trade", "aggregator": "b", "slot": "2024-06-01T00:15",
             "items": [trade("t1", "z", "sell", 0.5)]}),  # the other side of t1: its own row
    ("3-0", {"kind": "rejection", "aggregator": "a", "transaction_id": "tx",
             "items": [["x", "bid", "energy above the requirement"], ["y", "offer", "no"]]}),
    ("4-0", {"kind": "gap", "cause": "exchange", "rounds": 3, "seconds": 2.5, "first": "a", "last": "b"}),
    ("5-0", {"kind": "finish", "aggregator": "a"}),
]  # fmt: skip


def test_a_new_ledger_has_every_table_and_opening_it_again_changes_nothing(ledger_url: str) -> None:
    engine = store.open_ledger(ledger_url)
    names = set(inspect(engine).get_table_names())
    assert {t.name for t in schema.TABLES} <= names
    assert "alembic_version" in names
    store.open_ledger(ledger_url)  # migrating a migrated ledger is a no-op
    assert set(inspect(engine).get_table_names()) == names


def test_records_written_twice_are_kept_once(ledger_url: str) -> None:
    engine = store.open_ledger(ledger_url)
    rows = to_rows("r1", RECORDS, now=99.0)
    assert not rows.bad
    store.write(engine, RUN, rows)
    store.write(engine, RUN, to_rows("r1", RECORDS, now=100.0))  # delivered again
    (run,) = store.list_runs(engine)
    assert (run.run_id, run.finished, run.rounds, run.rounds_on_time) == ("r1", True, 1, 1)
    # t1 has a row per side (both assets are the fleet's) but is one trade
    assert (run.trades, run.settlement_trades, run.rejections) == (2, 1, 2)
    assert run.energy_kwh == pytest.approx(0.75)
    out = io.StringIO()
    assert store.export_csv(engine, "r1", "trades", out) == 3
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["trade_id"], r["asset_id"], r["side"], r["market"]) for r in table] == [
        ("t1", "x", "buy", "spot"),
        ("t1", "z", "sell", "spot"),
        ("t2", "y", "sell", "settlement"),
    ]
    assert float(table[0]["price_ct"]) == 5.0 and table[0]["order_id"] == "o-t1-x"


def test_each_aggregators_round_is_a_row_joined_to_its_rejections(ledger_url: str) -> None:
    engine = store.open_ledger(ledger_url)
    store.write(engine, RUN, to_rows("r1", RECORDS, now=1.0))
    store.write(engine, RUN, to_rows("r1", RECORDS, now=2.0))  # delivered again
    ar, rj = schema.aggregator_rounds, schema.rejections
    with engine.connect() as conn:
        parts = conn.execute(select(ar).order_by(ar.c.aggregator)).mappings().all()
        joined = conn.execute(
            select(ar.c.aggregator, rj.c.reason).join(
                rj, (rj.c.run_id == ar.c.run_id) & (rj.c.transaction_id == ar.c.transaction_id)
            )
        ).all()
        (received,) = conn.execute(select(schema.rounds.c.received_at)).scalars()
    assert [dict(p) for p in parts] == [
        {"run_id": "r1", "round_id": "2024-06-01T00:15/0", "aggregator": "a", "status": "sent",
         "event_ms": 0.0, "batch_ms": 12.5, "on_time": True, "commands": 8, "refused": 1,
         "strategy_errors": 0, "transaction_id": "tx"},
        {"run_id": "r1", "round_id": "2024-06-01T00:15/0", "aggregator": "b", "status": "missing",
         "event_ms": None, "batch_ms": None, "on_time": None, "commands": 0, "refused": 0,
         "strategy_errors": 0, "transaction_id": None},
    ]  # fmt: skip
    assert received == 1717200900.25
    assert sorted(joined) == [("a", "energy above the requirement"), ("a", "no")]


def test_bulk_batches_overlapping_and_repeated_keep_each_trade_once(ledger_url: str) -> None:
    """Big batches take PostgreSQL's COPY path (SQLite's executemany): a batch delivered again,
    one overlapping the last, and a trade twice within one batch are each kept once, values
    untouched."""
    engine = store.open_ledger(ledger_url)
    n = 3 * store.COPY_MIN_ROWS

    def batch(first: int, last: int) -> list[tuple[str, dict[str, object]]]:
        items = [trade(f"t{i}", f"a{i % 7}", "buy", 0.001 * i) for i in range(first, last)]
        return [("9-0", {"kind": "trade", "aggregator": "a", "slot": None, "items": items})]

    store.write(engine, RUN, to_rows("r1", batch(0, n), now=1.0))
    store.write(engine, RUN, to_rows("r1", batch(0, n), now=2.0))  # redelivered whole
    store.write(engine, RUN, to_rows("r1", batch(n // 2, 2 * n), now=3.0))  # half old, half new
    twice = batch(2 * n, 3 * n)
    store.write(engine, RUN, to_rows("r1", twice + twice, now=4.0))  # duplicates in one batch
    (run,) = store.list_runs(engine)
    assert run.trades == 3 * n
    assert run.energy_kwh == pytest.approx(sum(0.001 * i for i in range(3 * n)))
    rows = list(store.rows_of(engine, "r1"))
    assert len(rows) == 3 * n and len({r[0] for r in rows}) == 3 * n


def test_parquet_export(ledger_url: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    engine = store.open_ledger(ledger_url)
    store.write(engine, RUN, to_rows("r1", RECORDS, now=1.0))
    assert store.export_parquet(engine, "r1", "trades", tmp_path / "t.parquet") == 3
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column_names == store.TRADE_COLUMNS
    assert sorted(table.column("energy_kwh").to_pylist()) == [0.25, 0.5, 0.5]


def test_bad_records_are_named_and_skipped_not_guessed() -> None:
    rows = to_rows(
        "r1",
        [
            ("1-0", {"kind": "trade", "aggregator": "a", "items": [["t1", "x", "buy"]]}),
            ("2-0", {"kind": "trade", "aggregator": "a", "items": [trade("t1", "x", "up", 1.0)]}),
            (
                "3-0",
                {
                    "kind": "trade",
                    "aggregator": "a",
                    "slot": None,
                    "items": [["t", "x", "buy", float("nan"), 1.0, 0.0, None, "spot", None]],
                },
            ),
            ("4-0", {"kind": "round", "round": "r"}),
            ("5-0", {"kind": "what"}),
            ("6-0", {}),
            # the first item is good, the second not: neither is kept
            (
                "7-0",
                {
                    "kind": "trade",
                    "aggregator": "a",
                    "slot": None,
                    "items": [trade("t7", "x", "buy", 1.0), trade("t8", "x", "buy", 1.0)[:3]],
                },
            ),
            ("8-0", {**RECORDS[0][1], "outcomes": [["a", 0.0, 1.0, 1, 0, 0, "late", True, None]]}),
            ("9-0", {**RECORDS[0][1], "outcomes": [["a", 0.0, 1.0, 1, 0, 0, "sent", 1, None]]}),
            (
                "10-0",
                {**RECORDS[0][1], "outcomes": [["a", 0.0, 1.0, "1", 0, 0, "sent", True, None]]},
            ),
        ],
        now=1.0,
    )
    assert len(rows) == 0
    reasons = dict(rows.bad)
    assert "is not" in reasons["1-0"] and "side or market" in reasons["2-0"]
    assert "energy_kwh must be a finite number" in reasons["3-0"]
    assert "slot must be a non-empty string" in reasons["4-0"]
    assert "unknown record kind 'what'" in reasons["5-0"]
    assert "is not" in reasons["7-0"]
    assert "status not one of" in reasons["8-0"] and "on_time must be" in reasons["9-0"]
    assert "commands must be an integer" in reasons["10-0"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u:pw@h/db", "use sqlite:///PATH or postgresql://"),
        ("not a url", "is not a database URL"),
        ("postgresql://u:hunter2@127.0.0.1:1/x", "connection"),
    ],
)
def test_an_unusable_ledger_url_is_one_line_without_the_password(url: str, says: str) -> None:
    with pytest.raises(store.LedgerError) as err:
        store.open_ledger(url)
    message = str(err.value)
    assert says in message and "hunter2" not in message and "\n" not in message
