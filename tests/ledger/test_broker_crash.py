"""kill -9 of the broker Redis mid-run (append-only file, fsync every second, as in the
Kubernetes manifests): after it is back, the ledger holds every trade the exchange matched
exactly once, on SQLite and on PostgreSQL. Real Redis servers, the embedded exchange, ingress,
coordinator, Celery worker processes and the ledger writer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from gridfleet.ledger import store
from gridfleet.runtime.redis_server import RedisServer
from tests.ledger.fleet_ledger import ledger_trades, start_writer, trades_told
from tests.platform.harness import running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(params=["append-only", "no-persistence"])
def exchange_and_broker(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[RedisServer, RedisServer]]:
    """The broker as Kubernetes runs it, and one that comes back empty (the demo's): then
    only what the fleet's processes write again (the last seconds of records, the fleet, the
    run) is there, and the ledger must still end up whole."""
    with (
        RedisServer() as exchange,
        RedisServer(appendonly=request.param == "append-only") as broker,
    ):
        yield exchange, broker


def test_kill_9_of_the_broker_mid_run_loses_no_trade_and_counts_none_twice(
    exchange_and_broker: tuple[RedisServer, RedisServer], ledger_url: str
) -> None:
    exchange, broker = exchange_and_broker
    engine = store.open_ledger(ledger_url)
    with running_fleet(exchange.url, broker.url, slots=4, tick_interval=0.5) as (fleet, _):
        run_id = fleet.ingress.run_id
        deadline = time.monotonic() + 60
        while fleet.sim.counts.trades == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        trades_before = fleet.sim.counts.trades
        assert trades_before > 0
        time.sleep(0.3)  # the first slot's trade records are on the stream, nobody read them
        broker.crash(down_for=1.0)
        # The writer starts only now: what it reads of the first slot is what the broker kept
        # (append-only) or what the fleet wrote again after the restart (no persistence).
        writer, thread = start_writer(broker.url, engine, fleet, run_id)
        fleet.wait()
        thread.join(90)
        assert not thread.is_alive(), "the writer did not finish the run"
        counts = fleet.sim.counts
        told = trades_told(fleet)

    assert counts.trades > trades_before, "the run traded on after the crash"
    rows, per_trade = ledger_trades(engine)
    assert len(per_trade) == counts.trades  # every trade the exchange matched, once
    assert sum(e for _, e in per_trade) == pytest.approx(counts.energy_traded_kwh)
    assert rows == len(told)  # a row per side the fleet was told about, none twice
    assert writer.stats.bad_records == 0
