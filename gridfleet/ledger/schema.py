"""The ledger's tables (SQLAlchemy Core): one table per kind of record, every unit in its name.

Every row is keyed by something that stays the same when a record is delivered again (a trade's
id and the asset's side of it, a round's id, the stream entry a record came from), so writing
a record twice leaves one row. The schema is created and upgraded by the Alembic migrations in
``gridfleet/ledger/migrations``; this module is what the code and the migrations agree on.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

RECORD_ID = "the record's own id (its stream entry's, for records without one)"

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("namespace", String(64), nullable=False),
    Column("started_at", Float, nullable=True, comment="unix seconds"),
    Column("started_by", String(255), nullable=True, comment="host that started the run"),
    Column("finished_at", Float, nullable=True, comment="unix seconds of the last finish record"),
)

rounds = Table(
    "rounds",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("round_id", String(128), primary_key=True),
    Column("slot", String(16), nullable=False, comment="market slot YYYY-MM-DDTHH:MM"),
    Column("tick", Integer, nullable=False, comment="0 = market event, then one per tick"),
    Column("aggregators", Integer, nullable=False),
    Column("shards", Integer, nullable=False),
    Column("hedged", Integer, nullable=False, comment="shards the coordinator ran itself"),
    Column("commands", Integer, nullable=False, comment="commands published"),
    Column("refused", Integer, nullable=False, comment="refused by outbound validation"),
    Column("strategy_errors", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False, comment="first event -> last batch published"),
    Column("budget_ms", Float, nullable=False, comment="the round's deadline from its first event"),
    Column("on_time", Boolean, nullable=False),
    Column("received_at", Float, nullable=True, comment="unix seconds of the first event"),
)

aggregator_rounds = Table(
    "aggregator_rounds",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("round_id", String(128), primary_key=True),
    Column("aggregator", String(64), primary_key=True, comment="aggregator uuid"),
    Column(
        "status",
        String(16),
        nullable=False,
        comment="sent, empty (nothing to send), unusable (its event), unsent, missing (no event)",
    ),
    Column("event_ms", Float, nullable=True, comment="its event, after the round's first event"),
    Column("batch_ms", Float, nullable=True, comment="its batch out, after the first event"),
    Column("on_time", Boolean, nullable=True, comment="batch out by the round's deadline"),
    Column("commands", Integer, nullable=False, comment="commands in its batch"),
    Column("refused", Integer, nullable=False, comment="refused by outbound validation"),
    Column("strategy_errors", Integer, nullable=False),
    Column("transaction_id", String(128), nullable=True, comment="its batch's; see rejections"),
)

trades = Table(
    "trades",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("trade_id", String(64), primary_key=True),
    # a trade between two of the fleet's assets is one row per side
    Column("asset_id", String(64), primary_key=True),
    Column("aggregator", String(64), nullable=False, comment="aggregator uuid"),
    Column("side", String(4), nullable=False, comment="buy or sell"),
    Column("market", String(16), nullable=False, comment="spot or settlement"),
    Column("slot", String(16), nullable=True, comment="spot slot of the round before the trade"),
    Column("time", String(32), nullable=True, comment="the exchange's simulation time"),
    Column("energy_kwh", Float, nullable=False),
    Column("price_ct", Float, nullable=False, comment="what the buyer paid, total"),
    Column("fee_ct", Float, nullable=False, comment="grid fees, total"),
    Column("order_id", String(64), nullable=True, comment="the fleet's own order"),
)

rejections = Table(
    "rejections",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("record_id", String(64), primary_key=True, comment=RECORD_ID),
    Column("seq", Integer, primary_key=True, comment="position in the batch's answers"),
    Column("aggregator", String(64), nullable=False),
    Column("transaction_id", String(128), nullable=True, comment="the batch's"),
    Column("asset_id", String(64), nullable=False),
    Column("command", String(32), nullable=False),
    Column("reason", Text, nullable=False, comment="the exchange's own words"),
)

gaps = Table(
    "gaps",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("record_id", String(64), primary_key=True, comment=RECORD_ID),
    Column("cause", String(32), nullable=False, comment="exchange or broker"),
    Column("rounds", Integer, nullable=False, comment="rounds missed"),
    Column("seconds", Float, nullable=True),
    Column("first_round", String(64), nullable=True),
    Column("last_round", String(64), nullable=True),
)

finishes = Table(
    "finishes",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("aggregator", String(64), primary_key=True),
)


documents = Table(
    "documents",
    metadata,
    Column("run_id", String(64), primary_key=True),
    # counters: the run's counters hash at its end; sim_report, market_stats, slot_totals,
    # report_meta: what a demo (the embedded exchange) measured, for `gridfleet report`
    Column("name", String(64), primary_key=True),
    Column("body", Text, nullable=False, comment="JSON"),
)

TABLES = (runs, rounds, aggregator_rounds, trades, rejections, gaps, finishes, documents)
