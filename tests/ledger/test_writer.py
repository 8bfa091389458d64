"""The ledger writer against a real Redis and both databases: records of a run's stream end up
in the ledger once, whatever happens to the writer (kill -9 mid-run, restart) or the records
(delivered again, malformed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
import redis
from sqlalchemy import func, select

from gridfleet.ledger import schema, store
from gridfleet.ledger.writer import GROUP, LedgerWriter
from gridfleet.platform.keys import Keys
from gridfleet.platform.runs import join_run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def trade_record(n: int, per: int = 4) -> dict[str, object]:
    return {
        "kind": "trade",
        "aggregator": f"agg-{n % 7}",
        "slot": "2024-06-01T00:15",
        "items": [
            [f"t{n}-{i}", f"asset-{i}", "buy", 0.01, 0.3, 0.0, f"o{n}-{i}", "spot", None]
            for i in range(per)
        ],
    }


def new_run(r: redis.Redis) -> tuple[Keys, str]:
    keys = Keys(f"lt{uuid.uuid4().hex[:8]}")
    run_id, started = join_run(r, keys)
    assert started
    return keys, run_id


def publish(r: redis.Redis, keys: Keys, records: list[dict[str, object]]) -> None:
    pipe = r.pipeline(transaction=False)
    for rec in records:
        pipe.xadd(keys.events, {"data": orjson.dumps(rec)})
    pipe.execute()


def finish(r: redis.Redis, keys: Keys) -> None:
    publish(r, keys, [{"kind": "finish", "aggregator": "agg-0"}])
    r.hset(keys.counters, "finished", "1")


def count(engine: object, table: schema.Table) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_run_is_written_once_and_bad_records_are_skipped(redis_url: str, ledger_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    keys, run_id = new_run(r)
    run_keys = keys.for_run(run_id)
    publish(r, run_keys, [trade_record(n) for n in range(300)])
    publish(r, run_keys, [{"kind": "nonsense"}])
    r.xadd(run_keys.events, {"data": b"{not json"})
    finish(r, run_keys)
    engine = store.open_ledger(ledger_url)
    writer = LedgerWriter(r, engine, keys, run_id=run_id)
    writer.run()  # returns: the run is finished and drained
    assert count(engine, schema.trades) == 1200
    assert count(engine, schema.finishes) == 1
    assert writer.stats.bad_records == 2
    assert r.xpending(run_keys.events, GROUP)["pending"] == 0
    # a second writer over the same stream (everything acknowledged) adds nothing
    LedgerWriter(r, engine, Keys(keys.ns), run_id=run_id).run()
    assert count(engine, schema.trades) == 1200
    (summary,) = store.list_runs(engine)
    assert summary.finished and summary.trades == 1200
    assert summary.started_at is not None  # from the run's meta on the broker


def test_kill_9_of_the_writer_mid_run_loses_nothing_and_counts_nothing_twice(
    redis_url: str, ledger_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    keys, run_id = new_run(r)
    run_keys = keys.for_run(run_id)
    total = 6000  # records, 4 trade rows each
    stop = threading.Event()

    def producer() -> None:
        for start in range(0, total, 200):
            publish(r, run_keys, [trade_record(n) for n in range(start, start + 200)])
            if stop.wait(0.02):
                return

    engine = store.open_ledger(ledger_url)
    argv = [
        sys.executable, "-m", "gridfleet.cli", "ledger",
        "--broker-url", redis_url, "--ledger-url", ledger_url,
        "--namespace", keys.ns, "--run-id", run_id, "--log-level", "WARNING",
        "--consumer", "ledger-k8s",  # as deploy/k8s names it: the pod name changes, this not
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    feed = threading.Thread(target=producer, daemon=True)
    feed.start()
    first = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while count(engine, schema.trades) < 2000:  # mid-run: some written, more coming
            assert time.monotonic() < deadline, "the writer wrote nothing"
            assert first.poll() is None, "the writer exited"
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        feed.join(60)
        finish(r, run_keys)
        second = subprocess.run(
            argv, cwd=REPO, env=env, timeout=120, capture_output=True, text=True
        )
        assert second.returncode == 0, second.stderr[-2000:]
    finally:
        stop.set()
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert count(engine, schema.trades) == 4 * total  # every trade, once
    assert r.xpending(run_keys.events, GROUP)["pending"] == 0
    # the second writer read its own pending entries under the same name: no second consumer
    assert [c["name"] for c in r.xinfo_consumers(run_keys.events, GROUP)] == [b"ledger-k8s"]


def test_a_writer_started_before_its_run_waits_for_it(redis_url: str, tmp_path: Path) -> None:
    """`gridfleet run` starts the writer beside the ingress: the run may not exist yet."""
    r = redis.Redis.from_url(redis_url)
    keys = Keys(f"lt{uuid.uuid4().hex[:8]}")
    run_id = "20261207T000000Z-beefed"
    engine = store.open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    writer = LedgerWriter(r, engine, keys, run_id=run_id)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    time.sleep(1.5)  # several empty reads while nobody has joined the run
    assert thread.is_alive(), "the writer gave up on a run that had not started"
    join_run(r, keys, run_id)
    run_keys = keys.for_run(run_id)
    publish(r, run_keys, [trade_record(n) for n in range(50)])
    finish(r, run_keys)
    thread.join(30)
    assert not thread.is_alive()
    assert count(engine, schema.trades) == 200
