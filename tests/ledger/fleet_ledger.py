"""What the fleet-and-ledger tests share: a writer on its own thread, the trades the fleet was
told about, and the ledger's trades."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import redis
from sqlalchemy import Engine, func, select

from gridfleet.ledger import schema
from gridfleet.ledger.writer import LedgerWriter
from gridfleet.platform.keys import Keys
from tests.platform.harness import Fleet


def start_writer(
    broker_url: str, engine: Engine, fleet: Fleet, run_id: str
) -> tuple[LedgerWriter, threading.Thread]:
    """A ledger writer for run ``run_id`` of ``fleet``, running on a daemon thread."""
    writer = LedgerWriter(
        redis.Redis.from_url(broker_url), engine, Keys(fleet.config.namespace), run_id=run_id
    )
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    return writer, thread


def trades_told(fleet: Fleet) -> list[dict[str, Any]]:
    """Every trade entry of the trade events the exchange sent the fleet (a side each)."""
    return [
        t
        for raws in fleet.recorder.events.values()
        for raw in raws
        if (ev := orjson.loads(raw))["event"] == "trade"
        for t in ev["trade_list"]
    ]


def ledger_trades(engine: Engine) -> tuple[int, list[tuple[str, float]]]:
    """The ledger's trade rows, and (trade id, energy) once per trade."""
    t = schema.trades
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(t)).scalar_one()
        per_trade = conn.execute(
            select(t.c.trade_id, func.max(t.c.energy_kwh)).group_by(t.c.trade_id)
        ).all()
    return int(rows), [(tid, float(e)) for tid, e in per_trade]
