"""A fleet's run written into the ledger while it trades, on PostgreSQL: real Redis, the embedded
exchange, ingress, coordinator, Celery worker processes and the ledger writer beside them. The
ledger ends up with every trade the exchange matched, once, with the exchange's energy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from gridfleet.ledger import schema, store
from gridfleet.runtime.postgres_server import PostgresServer
from gridfleet.runtime.redis_server import RedisServer
from tests.ledger.fleet_ledger import ledger_trades, start_writer, trades_told
from tests.platform.harness import running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as exchange, RedisServer() as broker:
        yield exchange, broker


def test_a_fleet_run_lands_in_the_ledger_trade_for_trade(
    two_redis: tuple[RedisServer, RedisServer], postgres: PostgresServer
) -> None:
    exchange, broker = two_redis
    engine = store.open_ledger(postgres.new_database("ledger"))
    with running_fleet(exchange.url, broker.url, slots=3, tick_interval=0.5) as (fleet, _):
        run_id = fleet.ingress.run_id
        writer, thread = start_writer(broker.url, engine, fleet, run_id)
        fleet.wait()
        thread.join(60)
        assert not thread.is_alive(), "the writer did not finish the run"
        counts = fleet.sim.counts
        entries = trades_told(fleet)

    rows, per_trade = ledger_trades(engine)
    assert counts.trades > 100
    assert len(per_trade) == counts.trades  # every trade the exchange matched, once
    assert sum(e for _, e in per_trade) == pytest.approx(counts.energy_traded_kwh)
    assert rows == len(entries)  # a row per side the fleet was told about
    (run,) = store.list_runs(engine)
    assert run.run_id == run_id and run.finished and run.rounds > 0
    assert writer.stats.bad_records == 0

    # Each round, each aggregator: its event, its batch, what it sent.
    rd, ar = schema.rounds, schema.aggregator_rounds
    with engine.connect() as conn:
        rounds = {r.round_id: r for r in conn.execute(select(rd))}
        parts = conn.execute(select(ar)).all()
    by_round: dict[str, list[object]] = {}
    for part in parts:
        by_round.setdefault(part.round_id, []).append(part)
    assert by_round.keys() == rounds.keys()
    fleet_size = {len(v) for v in by_round.values()}
    assert len(fleet_size) == 1, "every round names every aggregator of the fleet, once"
    for round_id, ps in by_round.items():
        r = rounds[round_id]
        assert r.received_at is not None
        assert sum(p.commands for p in ps) == r.commands
        assert sum(p.refused for p in ps) == r.refused
        sent = [p for p in ps if p.status == "sent"]
        assert all(p.commands > 0 and p.transaction_id for p in sent)
        assert all(p.commands == 0 for p in ps if p.status == "empty")
        assert all(
            0 <= p.event_ms <= p.batch_ms and p.on_time == (p.batch_ms <= r.budget_ms)
            for p in ps
            if p.status in ("sent", "empty")
        )
        if r.on_time:
            assert all(p.on_time for p in ps if p.status in ("sent", "empty"))
    sent_ids = {p.transaction_id for p in parts if p.status == "sent"}
    assert len(sent_ids) == counts.batches_received  # each batch the exchange took, by its id
