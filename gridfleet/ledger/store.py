"""The ledger database: open it (SQLite by default, PostgreSQL by URL), bring its schema up to
date with the migrations, write rows idempotently, and read runs and trades back.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson
from sqlalchemy import Engine, case, create_engine, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from gridfleet.ledger import schema
from gridfleet.ledger.rows import Rows
from gridfleet.runtime.redact import redact

log = logging.getLogger(__name__)

DEFAULT_LEDGER_URL = "sqlite:///runs/ledger.sqlite"
"""Under the working directory, beside the demo's run folders."""

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
COPY_MIN_ROWS = 500
"""From this many rows in one table, PostgreSQL gets them by COPY (see :func:`_copy_insert`)."""
CONFLICT_KEYS = {t.name: [c.name for c in t.primary_key.columns] for t in schema.TABLES}


class LedgerError(RuntimeError):
    """The ledger cannot be opened or written; the message names the database (no password)."""


def open_ledger(url: str | None = None) -> Engine:
    """An engine for the ledger at ``url`` (default :data:`DEFAULT_LEDGER_URL`), its schema
    migrated to the newest version. SQLite: the file's folder is created, and writers wait
    for each other instead of failing (WAL, a busy timeout)."""
    url = url or DEFAULT_LEDGER_URL
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise LedgerError(f"ledger URL {redact(url)!r} is not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise LedgerError(f"ledger URL {redact(url)!r}: use sqlite:///PATH or postgresql://...")
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, pool_pre_ping=True)
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        migrate(engine)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise LedgerError(f"ledger {redact(url)}: {reason}") from None
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (Alembic, run in-process)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _insert(conn: Connection, table_name: str, rows: list[dict[str, Any]]) -> None:
    """``rows`` into ``table_name``; a row whose key is already there is left as it is."""
    if conn.dialect.name == "postgresql" and len(rows) >= COPY_MIN_ROWS:
        _copy_insert(conn, table_name, rows)
        return
    # One executemany: SQLAlchemy batches it into multi-row statements itself
    # ("insertmanyvalues"), compiled once. (Compiling a ``.values([...])`` of 2 000 rows per
    # chunk was 14x slower: 7.4 s against 0.5 s for 40 000 trade rows on PostgreSQL.)
    table = schema.metadata.tables[table_name]
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(table).on_conflict_do_nothing(index_elements=CONFLICT_KEYS[table_name])
    conn.execute(stmt, rows)


def _copy_insert(conn: Connection, table_name: str, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL, many rows: COPY into a temporary staging table (emptied at commit), then one
    INSERT ... SELECT ... ON CONFLICT DO NOTHING. 54 000 trade rows: 0.40 s, against 0.94 s
    for the executemany (``bench/results/ledger_write.json``)."""
    columns = [c.name for c in schema.metadata.tables[table_name].columns]
    names = ", ".join(columns)
    stage = f"stage_{table_name}"
    made: set[str] = conn.connection.info.setdefault("gridfleet_stages", set())
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if stage not in made:
            # per database session; ON COMMIT DELETE ROWS keeps it empty between transactions
            cur.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage}"
                f" (LIKE {table_name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            made.add(stage)
        with cur.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
        # (rows staged twice in one transaction would be inserted twice: harmless, the
        # second time conflicts on every key)
        cur.execute(
            f"INSERT INTO {table_name} ({names}) SELECT {names} FROM {stage} ON CONFLICT DO NOTHING"
        )
    finally:
        cur.close()


def write(engine: Engine, run: Mapping[str, Any], rows: Rows) -> None:
    """One transaction: the run's row (created once, its finish time kept up to date) and
    ``rows``; a row already there (a record delivered again) is left as it is."""
    with engine.begin() as conn:
        _insert(conn, "runs", [dict(run)])
        if run.get("started_at") is not None:  # a writer that came up before the run did
            conn.execute(
                schema.runs.update()
                .where(schema.runs.c.run_id == run["run_id"], schema.runs.c.started_at.is_(None))
                .values(started_at=run["started_at"], started_by=run.get("started_by"))
            )
        for table_name, table_rows in rows.by_table.items():
            if table_rows:
                _insert(conn, table_name, table_rows)
        if rows.finished_at is not None:
            conn.execute(
                schema.runs.update()
                .where(schema.runs.c.run_id == run["run_id"])
                .values(finished_at=rows.finished_at)
            )


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """A run's totals; ``trades`` counts each trade once, ``energy_kwh`` is theirs."""

    run_id: str
    started_at: float | None
    finished: bool
    rounds: int
    rounds_on_time: int
    trades: int
    energy_kwh: float
    settlement_trades: int
    rejections: int


def list_runs(engine: Engine) -> list[RunSummary]:
    """Every run in the ledger, newest first, with its totals."""
    r, t, rd, rj = schema.runs, schema.trades, schema.rounds, schema.rejections
    # one row per trade (both sides of a trade inside the fleet are rows of their own)
    per_trade = (
        select(
            t.c.run_id,
            t.c.trade_id,
            func.max(t.c.energy_kwh).label("kwh"),
            func.max(case((t.c.market == "settlement", 1), else_=0)).label("settled"),
        )
        .group_by(t.c.run_id, t.c.trade_id)
        .subquery()
    )
    trade_q = (
        select(
            per_trade.c.run_id,
            func.count().label("n"),
            func.coalesce(func.sum(per_trade.c.kwh), 0.0).label("kwh"),
            func.sum(per_trade.c.settled).label("settled"),
        )
        .group_by(per_trade.c.run_id)
        .subquery()
    )
    round_q = (
        select(
            rd.c.run_id,
            func.count().label("n"),
            func.sum(case((rd.c.on_time, 1), else_=0)).label("on_time"),
        )
        .group_by(rd.c.run_id)
        .subquery()
    )
    rej_q = select(rj.c.run_id, func.count().label("n")).group_by(rj.c.run_id).subquery()
    q = (
        select(
            r.c.run_id,
            r.c.started_at,
            r.c.finished_at,
            round_q.c.n,
            round_q.c.on_time,
            trade_q.c.n,
            trade_q.c.kwh,
            trade_q.c.settled,
            rej_q.c.n,
        )
        .outerjoin(trade_q, trade_q.c.run_id == r.c.run_id)
        .outerjoin(round_q, round_q.c.run_id == r.c.run_id)
        .outerjoin(rej_q, rej_q.c.run_id == r.c.run_id)
        .order_by(r.c.run_id.desc())
    )
    with engine.connect() as conn:
        return [
            RunSummary(
                run_id=row[0],
                started_at=row[1],
                finished=row[2] is not None,
                rounds=int(row[3] or 0),
                rounds_on_time=int(row[4] or 0),
                trades=int(row[5] or 0),
                energy_kwh=float(row[6] or 0.0),
                settlement_trades=int(row[7] or 0),
                rejections=int(row[8] or 0),
            )
            for row in conn.execute(q)
        ]


def run_exists(engine: Engine, run_id: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(select(schema.runs.c.run_id).where(schema.runs.c.run_id == run_id)).first()
            is not None
        )


TRADE_COLUMNS = [
    "trade_id",
    "asset_id",
    "aggregator",
    "side",
    "market",
    "slot",
    "time",
    "energy_kwh",
    "price_ct",
    "fee_ct",
    "order_id",
]


@dataclass(frozen=True)
class Export:
    """What ``gridfleet export`` can write of a run: a table's columns, in a stable order."""

    table: str
    columns: list[str]
    order: list[str]
    noun: str  # what one row is, for the CLI's summary line


EXPORTS = {
    "trades": Export("trades", TRADE_COLUMNS, ["time", "trade_id", "asset_id"], "trades"),
    "rounds": Export(
        "aggregator_rounds",
        [c.name for c in schema.aggregator_rounds.columns if c.name != "run_id"],
        ["round_id", "aggregator"],
        "aggregator rounds",
    ),
    "rejections": Export(
        "rejections",
        [c.name for c in schema.rejections.columns if c.name != "run_id"],
        ["record_id", "seq"],
        "rejected commands",
    ),
}
"""By the CLI's name: ``--trades``, ``--rounds`` (each aggregator's part of each round),
``--rejections``."""


def rows_of(
    engine: Engine, run_id: str, what: str = "trades", batch: int = 10_000
) -> Iterator[tuple[Any, ...]]:
    """The run's rows of export ``what`` (:data:`EXPORTS`), in order, streamed."""
    export = EXPORTS[what]
    t = schema.metadata.tables[export.table]
    q = (
        select(*(t.c[name] for name in export.columns))
        .where(t.c.run_id == run_id)
        .order_by(*(t.c[name] for name in export.order))
    )
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=batch).execute(q)
        for row in result:
            yield tuple(row)


def export_csv(engine: Engine, run_id: str, what: str, out: TextIO) -> int:
    """Write the run's rows of ``what`` as CSV (header first); the number of rows."""
    writer = csv.writer(out)
    writer.writerow(EXPORTS[what].columns)
    n = 0
    for row in rows_of(engine, run_id, what):
        writer.writerow(row)
        n += 1
    return n


def export_parquet(engine: Engine, run_id: str, what: str, path: Path) -> int:
    """Write the run's rows of ``what`` as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = EXPORTS[what].columns
    rows = list(rows_of(engine, run_id, what))
    pq.write_table(
        pa.table({name: [row[i] for row in rows] for i, name in enumerate(columns)}), path
    )
    return len(rows)


# -- documents and reports ------------------------------------------------------------------


def put_documents(engine: Engine, run_id: str, documents: Mapping[str, Any]) -> None:
    """Store JSON documents of a run under their names, replacing older ones of that name."""
    d = schema.documents
    with engine.begin() as conn:
        for name, body in documents.items():
            text = orjson.dumps(body).decode()
            dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
            stmt = dialect.insert(d).values(run_id=run_id, name=name, body=text)
            conn.execute(
                stmt.on_conflict_do_update(index_elements=["run_id", "name"], set_={"body": text})
            )


def get_documents(engine: Engine, run_id: str) -> dict[str, Any]:
    d = schema.documents
    with engine.connect() as conn:
        rows = conn.execute(select(d.c.name, d.c.body).where(d.c.run_id == run_id)).all()
    return {name: orjson.loads(body) for name, body in rows}


def records_of(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """The run's records as the report reads them (``gridfleet.report.model``), rebuilt from
    the ledger: rounds in round order, each aggregator's trades summed per slot (spot apart
    from settlement), gaps and finishes."""
    rd, t, g, f = schema.rounds, schema.trades, schema.gaps, schema.finishes
    out: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for row in conn.execute(
            select(rd).where(rd.c.run_id == run_id).order_by(rd.c.slot, rd.c.tick, rd.c.round_id)
        ).mappings():
            rec = {k: v for k, v in row.items() if k not in ("run_id", "round_id")}
            out.append({"kind": "round", "round": row["round_id"], **rec})
        settled = case((t.c.market == "settlement", 1), else_=0)
        spot = case((t.c.market == "settlement", 0), else_=1)
        for row in conn.execute(
            select(
                t.c.aggregator,
                t.c.slot,
                func.sum(spot).label("trades"),
                func.sum(t.c.energy_kwh * spot).label("energy_kwh"),
                func.sum(t.c.price_ct * spot).label("price_ct"),
                func.sum(t.c.fee_ct * spot).label("fees_ct"),
                func.sum(settled).label("settlement_trades"),
                func.sum(t.c.energy_kwh * settled).label("settlement_energy_kwh"),
                func.sum(t.c.price_ct * settled).label("settlement_price_ct"),
                func.sum(t.c.fee_ct * settled).label("settlement_fees_ct"),
            )
            .where(t.c.run_id == run_id)
            .group_by(t.c.aggregator, t.c.slot)
            .order_by(t.c.slot, t.c.aggregator)
        ).mappings():
            rec = {"kind": "trade", "slot": row["slot"], "aggregator": row["aggregator"]}
            for key in ("trades", "settlement_trades"):
                rec[key] = int(row[key] or 0)
            for key in ("energy_kwh", "price_ct", "fees_ct"):
                rec[key] = float(row[key] or 0.0)
                if rec["settlement_trades"]:
                    rec[f"settlement_{key}"] = float(row[f"settlement_{key}"] or 0.0)
            if not rec["settlement_trades"]:
                del rec["settlement_trades"]
            out.append(rec)
        for row in conn.execute(
            select(g).where(g.c.run_id == run_id).order_by(g.c.first_round, g.c.record_id)
        ).mappings():
            out.append(
                {
                    "kind": "gap",
                    "cause": row["cause"],
                    "rounds": row["rounds"],
                    "seconds": row["seconds"],
                    "first": row["first_round"],
                    "last": row["last_round"],
                }
            )
        for (aggregator,) in conn.execute(select(f.c.aggregator).where(f.c.run_id == run_id)):
            out.append({"kind": "finish", "aggregator": aggregator})
    return out
