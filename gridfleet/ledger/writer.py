"""The ledger writer: the run's event stream on the broker -> the ledger database.

At-least-once, written once: the writer reads the stream through a Redis consumer group
(``ledger``), writes a batch of records in one database transaction and acknowledges the
entries only after the commit. A writer killed between the two leaves its entries pending; the
next one (same consumer name) reads its own pending entries first, and entries another consumer
left pending for :data:`CLAIM_IDLE_MS` are claimed. Rows are keyed by what a record means (a
trade's id and side, a round's id, the entry a rejection came from), so a record written again
adds nothing. A broker or database outage is waited out: nothing is acknowledged that was not
committed.

The writer follows the fleet's current run; when a run has finished (or another run started)
and its stream holds nothing unread or pending, it moves on to the next run.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from gridfleet.ledger import store
from gridfleet.ledger.rows import to_rows
from gridfleet.platform.keys import Keys
from gridfleet.platform.runs import current_run, is_finished

log = logging.getLogger(__name__)

GROUP = "ledger"
BATCH = 5000  # stream entries per read (a 100 000-asset slot end is ~1 000 trade records)
BLOCK_MS = 500
CLAIM_IDLE_MS = 30_000  # an entry pending this long with another consumer is taken over
RETRY_S = 1.0
LAGS_KEPT = 100_000  # batches whose lag the percentiles are over


@dataclass
class WriterStats:
    entries: int = 0  # stream entries committed and acknowledged
    batches: int = 0
    rows: int = 0
    bad_records: int = 0
    last_lag_s: float = 0.0  # entry added -> committed, for the oldest entry of the last batch
    max_lag_s: float = 0.0
    # the same, per committed batch: the last LAGS_KEPT (a writer runs for months)
    lags_s: deque[float] = field(default_factory=lambda: deque(maxlen=LAGS_KEPT))

    def as_dict(self) -> dict[str, Any]:
        """Totals and lag percentiles (nearest rank), for ``gridfleet ledger --stats-file``."""
        lags = sorted(self.lags_s)

        def rank(p: float) -> float | None:
            if not lags:
                return None
            return round(lags[min(len(lags) - 1, max(0, math.ceil(p / 100 * len(lags)) - 1))], 4)

        return {
            "entries": self.entries,
            "rows": self.rows,
            "bad_records": self.bad_records,
            "batches": self.batches,
            "lag_s": {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": rank(100)},
        }


def default_consumer() -> str:
    """Stable per host: a writer restarted on the same host takes its own pending entries."""
    return f"ledger@{socket.gethostname()}"


class LedgerWriter:
    """Copies the fleet's runs from the broker into the ledger, run after run."""

    def __init__(
        self,
        broker: redis.Redis,
        engine: Engine,
        keys: Keys,
        *,
        consumer: str | None = None,
        stop: threading.Event | None = None,
        run_id: str | None = None,
    ) -> None:
        self.broker = broker
        self.engine = engine
        self.keys = keys
        self.consumer = consumer or default_consumer()
        self.stop_event = stop or threading.Event()
        self.only_run = run_id  # follow this run only (tests, `gridfleet ledger --run`)
        self.stats = WriterStats()
        self._bad_kinds: set[str] = set()
        self._seen_current: set[str] = set()  # runs seen as the fleet's current run
        # time.monotonic() of the loop's last iteration (`run` and `follow`): /healthz reads it
        self.last_beat = time.monotonic()

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Until stopped: follow the current run, then the next one."""
        done: set[str] = set()
        while not self.stop_event.is_set():
            self.last_beat = time.monotonic()
            try:
                run_id = self.only_run or current_run(self.broker, self.keys)
            except redis.RedisError as exc:
                self._wait(f"broker unreachable ({exc})")
                continue
            if run_id is None or run_id in done:
                if self.only_run and run_id in done:
                    return
                self.stop_event.wait(BLOCK_MS / 1000)
                continue
            if self.follow(run_id):
                done.add(run_id)

    def follow(self, run_id: str) -> bool:
        """Write run ``run_id`` until it is over and drained; True then, False if stopped."""
        keys = self.keys.for_run(run_id)
        stream = keys.events
        run_row: dict[str, Any] | None = None
        cursor = "0"  # own pending entries first: what a killed writer read but did not commit
        log.info("ledger: writing run %s", run_id)
        while not self.stop_event.is_set():
            self.last_beat = time.monotonic()
            try:
                if run_row is None:
                    self._ensure_group(stream)
                    run_row = self._run_row(keys, run_id)
                entries = self._read(stream, cursor)
                if cursor == "0" and not entries:
                    cursor = ">"
                    continue
                if not entries:
                    entries = self._claim(stream)
                if entries:
                    if run_row["started_at"] is None:  # written by the run's first joiner
                        run_row = self._run_row(keys, run_id)
                    self._commit(stream, run_row, entries)
                    continue
                if self._over(keys, run_id, stream):
                    # the run's own counters, as the report reads them (the hash expires)
                    raw: Any = self.broker.hgetall(keys.counters)
                    counters = {k.decode(): v.decode() for k, v in raw.items()}
                    store.put_documents(self.engine, run_id, {"counters": counters})
                    log.info(
                        "ledger: run %s written (%d entries, %d rows so far)",
                        run_id,
                        self.stats.entries,
                        self.stats.rows,
                    )
                    return True
            except redis.RedisError as exc:
                self._wait(f"broker unreachable ({exc}); nothing unacknowledged is lost")
                cursor = "0"
                run_row = None  # a restarted broker may have lost the group: make it again
            except SQLAlchemyError as exc:
                self._wait(
                    f"ledger database write failed ({exc.__class__.__name__}); entries stay "
                    "pending and are written again"
                )
                cursor = "0"
        return False

    # -- steps ----------------------------------------------------------------------------------

    def _ensure_group(self, stream: str) -> None:
        try:
            self.broker.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _run_row(self, keys: Keys, run_id: str) -> dict[str, Any]:
        raw: Any = self.broker.hgetall(keys.run_meta)
        meta = {k.decode(): v.decode() for k, v in raw.items()}
        started = meta.get("started_at")
        return {
            "run_id": run_id,
            "namespace": self.keys.ns,
            "started_at": float(started) if started else None,
            "started_by": meta.get("started_by"),
            "finished_at": None,
        }

    def _read(self, stream: str, cursor: str) -> list[tuple[str, Mapping[bytes, bytes]]]:
        got: Any = self.broker.xreadgroup(
            GROUP,
            self.consumer,
            {stream: cursor},
            count=BATCH,
            block=None if cursor == "0" else BLOCK_MS,
        )
        if not got:
            return []
        (_, entries), *_ = got
        return [(eid.decode(), fields) for eid, fields in entries if fields]

    def _claim(self, stream: str) -> list[tuple[str, Mapping[bytes, bytes]]]:
        """Entries another consumer read and left pending too long (it died)."""
        claimed: Any = self.broker.xautoclaim(
            stream, GROUP, self.consumer, CLAIM_IDLE_MS, start_id="0-0", count=BATCH
        )
        entries = claimed[1]
        if entries:
            log.warning("ledger: took over %d entries another writer left pending", len(entries))
        return [(eid.decode(), fields) for eid, fields in entries if fields]

    def _commit(
        self, stream: str, run_row: dict[str, Any], entries: list[tuple[str, Mapping[bytes, bytes]]]
    ) -> None:
        records = []
        for eid, fields in entries:
            try:
                record = orjson.loads(fields.get(b"data", b"null"))
            except orjson.JSONDecodeError:
                record = None
            records.append((eid, record if isinstance(record, dict) else {}))
        rows = to_rows(run_row["run_id"], records, time.time())
        store.write(self.engine, run_row, rows)
        self.broker.xack(stream, GROUP, *[eid for eid, _ in entries])
        now = time.time()
        oldest_ms = min(int(eid.split("-", 1)[0]) for eid, _ in entries)
        self.stats.last_lag_s = max(0.0, now - oldest_ms / 1000)
        self.stats.max_lag_s = max(self.stats.max_lag_s, self.stats.last_lag_s)
        self.stats.lags_s.append(self.stats.last_lag_s)
        self.stats.batches += 1
        self.stats.entries += len(entries)
        self.stats.rows += len(rows)
        for eid, reason in rows.bad:
            self.stats.bad_records += 1
            if reason not in self._bad_kinds:  # once per kind of problem: a flood stays readable
                self._bad_kinds.add(reason)
                log.error("ledger: record %s skipped: %s", eid, reason)

    def _over(self, keys: Keys, run_id: str, stream: str) -> bool:
        """The run is over (finished, or another run became current after it) and nothing of
        it is left. A run that has not started yet is not over: a writer started beside the
        fleet (`gridfleet run`) may come up before the ingress has joined the run."""
        current = current_run(self.broker, self.keys)
        if current == run_id:
            self._seen_current.add(run_id)
        # another run became current; none at all is a broker that lost its keys (a restart
        # without persistence): the fleet writes them again, and the run goes on
        moved_on = current is not None and current != run_id and run_id in self._seen_current
        if not (is_finished(self.broker, keys) or moved_on):
            return False
        pending: Any = self.broker.xpending(stream, GROUP)
        if pending and pending.get("pending"):
            return False
        info: Any = self.broker.xinfo_groups(stream)
        groups = {g["name"].decode(): g for g in info}
        lag = groups.get(GROUP, {}).get("lag")
        return not lag  # None (unknown) after a trim: nothing left we could still read

    def _wait(self, why: str) -> None:
        log.error("ledger: %s; retrying in %.0f s", why, RETRY_S)
        self.stop_event.wait(RETRY_S)
