"""What the fleet services count, and who hears it.

Ingress, coordinator and workers keep no counters of their own. They say what happened (an
event received, a round dispatched, lost or skipped, batches published, a shard evaluated) to
an :class:`Observers` fan-out, and the observers hung off it count, in the spirit of dramatiq's
middleware: :class:`Observer` has one no-op method per hook, an observer overrides the hooks it
cares about.

- :class:`PrometheusObserver`: the process's ``/metrics`` (:mod:`gridfleet.runtime.metrics`);
- :class:`BrokerCounters`: the broker's counters hash that the demo and the report read;
- :class:`Tally`: in-process totals (what the process itself, its logs and tests read).

A failing observer never stops the loop that calls it: :class:`Observers` logs the failure and
goes on. :class:`BrokerCounters` keeps what it could not write while the broker is down and
writes it when the broker is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from gridfleet.platform.collector import CollectorStats
    from gridfleet.runtime.metrics import Metrics

log = logging.getLogger(__name__)


class RoundSkip(StrEnum):
    """Why a round was not answered on purpose (a fixed set: it is a metric label)."""

    UNUSABLE = "unusable"  # ingress: the round's events give no tick context
    SUPERSEDED = "superseded"  # ingress: a newer round was already due
    PAST_DEADLINE = "past_deadline"  # coordinator: its tick has passed and newer rounds wait
    FENCED = "fenced"  # coordinator: it lost the lease, or the round was already published


class RoundLoss(StrEnum):
    """Why a round was lost against the service's will (a metric label)."""

    BROKER = "broker"  # ingress could not write or send it: the broker was unreachable
    COORDINATOR = "coordinator"  # the coordinator could not read or answer it
    EXCHANGE = (
        "exchange"  # one aggregator's batch: the exchange never took it (REST retries ran out)
    )


class GapCause(StrEnum):
    """Why rounds went by without the fleet seeing them (a metric label)."""

    EXCHANGE = "exchange"  # no events arrived: the exchange, or the link to it, was away
    BROKER = "broker"  # ingress could not write or send rounds: the broker was unreachable


@dataclass(frozen=True, slots=True)
class Gap:
    """An outage, once it is over: how long, how many rounds it cost, which."""

    cause: GapCause
    rounds: int  # rounds the fleet should have answered and did not
    seconds: float
    first: str  # the first and last round missed, as ``<slot>#<tick>`` ("" if none)
    last: str

    def as_record(self) -> dict[str, object]:
        """The gap's record on the run's event stream (the report reads it)."""
        return {
            "kind": "gap",
            "cause": self.cause.value,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 3),
            "first": self.first,
            "last": self.last,
        }


@dataclass
class RoundOutcome:
    """A round the coordinator answered: what it published and how late."""

    round_id: str
    aggregators: int
    shards: int
    hedged: int
    commands: int
    refusals: int
    errors: int
    unusable: int
    latency_s: float  # first event of the round -> batches published
    budget_s: float
    on_time: bool  # published before the deadline ingress set (the exchange's own figure is in the sim report)
    shard_seconds: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ShardEvaluated:
    """A shard a worker (or the coordinator, hedging) evaluated."""

    assets: int  # assets and markets evaluated
    duration_s: float
    commands: int
    refused: int  # commands outbound validation refused
    errors: int  # strategy evaluations that raised


class Observer:
    """One method per thing that happens in the pipeline; each a no-op here.

    Hooks may be called from several threads (pub/sub readers, the coordinator's response
    thread): an observer that keeps state guards it.
    """

    # -- ingress ------------------------------------------------------------------------------
    def event_received(self, kind: str) -> None:
        """An exchange event was read; ``kind`` is its type (market, tick, trade, finish)."""

    def event_unusable(self, aggregator: str) -> None:
        """An event of ``aggregator`` could not be decoded and was skipped."""

    def events_superseded(self, n: int) -> None:
        """``n`` events were skipped unparsed: a newer round had already arrived."""

    def round_dispatched(self, shards: int, queue_depth: int) -> None:
        """A round's shards were sent; ``queue_depth`` shard tasks wait in the broker."""

    def trades_recorded(self, trades: int, energy_kwh: float) -> None:
        """Trade events reported ``trades`` spot trades of ``energy_kwh`` in all."""

    def settlement_trades_recorded(self, trades: int, energy_kwh: float) -> None:
        """Trade events reported ``trades`` settlement-market trades of ``energy_kwh``."""

    def records_lost(self, n: int) -> None:
        """``n`` event records were dropped: the broker was away longer than the records kept
        for it (:data:`gridfleet.platform.records.MAX_UNWRITTEN`)."""

    def broker_outage(self) -> None:
        """The broker became unreachable (once per outage)."""

    def ingress_stopped(self, stats: CollectorStats) -> None:
        """The ingress loop ended; ``stats`` are its round collector's totals."""

    def gap_closed(self, gap: Gap) -> None:
        """An exchange or broker outage ended; ``gap`` says what it cost."""

    # -- ingress and coordinator --------------------------------------------------------------
    def round_skipped(self, reason: RoundSkip) -> None:
        """A round was deliberately not answered."""

    def round_lost(self, reason: RoundLoss) -> None:
        """A round was lost."""

    def reconnect(self, who: str) -> None:
        """An exchange reader reconnected (events published meanwhile are lost)."""

    # -- coordinator --------------------------------------------------------------------------
    def round_published(self, outcome: RoundOutcome) -> None:
        """A round's batches were published."""

    def commands_rejected(self, n: int) -> None:
        """The exchange answered ``n`` commands with an error."""

    def broker_error(self) -> None:
        """A broker call failed and is retried."""

    # -- workers ------------------------------------------------------------------------------
    def shard_evaluated(self, shard: ShardEvaluated) -> None:
        """A worker evaluated a shard."""

    # -- all ----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write what is buffered (called once per loop pass)."""


class Observers(Observer):
    """The fan-out the services call: every hook goes to each observer in turn.

    An observer that raises is logged (once per observer and hook, then at debug level) and
    skipped: counting must never stop the loop that trades.
    """

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.observers: list[Observer] = list(observers)
        self.failures = 0
        self._reported: set[tuple[str, str]] = set()

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def _each(self, hook: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                self.failures += 1
                key = (type(observer).__name__, hook)
                level = logging.DEBUG if key in self._reported else logging.ERROR
                self._reported.add(key)
                log.log(level, "observer %s failed in %s", key[0], hook, exc_info=True)

    def event_received(self, kind: str) -> None:
        self._each("event_received", kind)

    def event_unusable(self, aggregator: str) -> None:
        self._each("event_unusable", aggregator)

    def events_superseded(self, n: int) -> None:
        self._each("events_superseded", n)

    def round_dispatched(self, shards: int, queue_depth: int) -> None:
        self._each("round_dispatched", shards, queue_depth)

    def trades_recorded(self, trades: int, energy_kwh: float) -> None:
        self._each("trades_recorded", trades, energy_kwh)

    def settlement_trades_recorded(self, trades: int, energy_kwh: float) -> None:
        self._each("settlement_trades_recorded", trades, energy_kwh)

    def records_lost(self, n: int) -> None:
        self._each("records_lost", n)

    def broker_outage(self) -> None:
        self._each("broker_outage")

    def ingress_stopped(self, stats: CollectorStats) -> None:
        self._each("ingress_stopped", stats)

    def gap_closed(self, gap: Gap) -> None:
        self._each("gap_closed", gap)

    def round_skipped(self, reason: RoundSkip) -> None:
        self._each("round_skipped", reason)

    def round_lost(self, reason: RoundLoss) -> None:
        self._each("round_lost", reason)

    def reconnect(self, who: str) -> None:
        self._each("reconnect", who)

    def round_published(self, outcome: RoundOutcome) -> None:
        self._each("round_published", outcome)

    def commands_rejected(self, n: int) -> None:
        self._each("commands_rejected", n)

    def broker_error(self) -> None:
        self._each("broker_error")

    def shard_evaluated(self, shard: ShardEvaluated) -> None:
        self._each("shard_evaluated", shard)

    def flush(self) -> None:
        self._each("flush")


class Tally(Observer):
    """In-process totals: what the process itself reports, and what tests read.

    Unlike the broker's hash, a broker restart does not erase these.
    """

    def __init__(self, keep_outcomes: int = 1000) -> None:
        self.events = 0
        self.bad_events = 0
        self.stale_events = 0
        self.rounds_dispatched = 0
        self.skipped: Counter[RoundSkip] = Counter()
        self.lost_rounds = 0
        self.lost_records = 0
        self.broker_outages = 0
        self.broker_errors = 0
        self.reconnects = 0
        self.trades = 0
        self.settlement_trades = 0
        self.rounds_published = 0
        self.hedged_shards = 0
        self.commands_rejected_total = 0
        self.shards_evaluated = 0
        self.assets_evaluated = 0
        self.gap_rounds: Counter[GapCause] = Counter()
        self.gaps: deque[Gap] = deque(maxlen=keep_outcomes)  # the latest only
        self.outcomes: deque[RoundOutcome] = deque(maxlen=keep_outcomes)  # the latest only
        self._lock = threading.Lock()

    def event_received(self, kind: str) -> None:
        self.events += 1

    def event_unusable(self, aggregator: str) -> None:
        self.bad_events += 1

    def events_superseded(self, n: int) -> None:
        self.stale_events += n

    def round_dispatched(self, shards: int, queue_depth: int) -> None:
        self.rounds_dispatched += 1

    def trades_recorded(self, trades: int, energy_kwh: float) -> None:
        self.trades += trades

    def settlement_trades_recorded(self, trades: int, energy_kwh: float) -> None:
        self.settlement_trades += trades

    def records_lost(self, n: int) -> None:
        self.lost_records += n

    def broker_outage(self) -> None:
        self.broker_outages += 1

    def gap_closed(self, gap: Gap) -> None:
        self.gap_rounds[gap.cause] += gap.rounds
        self.gaps.append(gap)

    def round_skipped(self, reason: RoundSkip) -> None:
        self.skipped[reason] += 1

    def round_lost(self, reason: RoundLoss) -> None:
        self.lost_rounds += 1

    def reconnect(self, who: str) -> None:
        with self._lock:  # reader threads
            self.reconnects += 1

    def round_published(self, outcome: RoundOutcome) -> None:
        self.rounds_published += 1
        self.hedged_shards += outcome.hedged
        self.outcomes.append(outcome)

    def commands_rejected(self, n: int) -> None:
        with self._lock:  # the response thread
            self.commands_rejected_total += n

    def broker_error(self) -> None:
        self.broker_errors += 1

    def shard_evaluated(self, shard: ShardEvaluated) -> None:
        self.shards_evaluated += 1
        self.assets_evaluated += shard.assets


class PrometheusObserver(Observer):
    """Ingress and coordinator hooks as the process's Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def event_received(self, kind: str) -> None:
        self.m.events.labels(kind).inc()

    def event_unusable(self, aggregator: str) -> None:
        self.m.bad_events.inc()  # the aggregator is in the log line, not in a label

    def events_superseded(self, n: int) -> None:
        self.m.stale_events.inc(n)

    def round_dispatched(self, shards: int, queue_depth: int) -> None:
        self.m.rounds.inc()
        self.m.shards.inc(shards)
        self.m.queue_depth.set(queue_depth)

    def trades_recorded(self, trades: int, energy_kwh: float) -> None:
        self.m.trades.inc(trades)
        self.m.energy_traded.inc(energy_kwh)

    def settlement_trades_recorded(self, trades: int, energy_kwh: float) -> None:
        self.m.settlement_trades.inc(trades)
        self.m.settlement_energy.inc(energy_kwh)

    def records_lost(self, n: int) -> None:
        self.m.lost_records.inc(n)

    def broker_outage(self) -> None:
        self.m.broker_outages.inc()

    def gap_closed(self, gap: Gap) -> None:
        cause = GapCause(gap.cause).value
        self.m.gaps.labels(cause).inc()
        self.m.gap_rounds.labels(cause).inc(gap.rounds)

    def round_skipped(self, reason: RoundSkip) -> None:
        self.m.skipped_rounds.labels(RoundSkip(reason).value).inc()

    def round_lost(self, reason: RoundLoss) -> None:
        self.m.lost_rounds.labels(RoundLoss(reason).value).inc()

    def reconnect(self, who: str) -> None:
        self.m.reconnects.inc()

    def round_published(self, outcome: RoundOutcome) -> None:
        m, o = self.m, outcome
        m.deadline.labels("hit" if o.on_time else "miss").inc()
        m.batches.inc(o.aggregators)
        m.hedged.inc(o.hedged)
        m.commands_sent.inc(o.commands)
        m.commands_refused.inc(o.refusals)
        m.strategy_errors.inc(o.errors)
        m.bad_events.inc(o.unusable)
        for s in o.shard_seconds:
            m.shard_duration.observe(s)
        # Once per round, for all its aggregators: a label per aggregator would mean a series
        # set per aggregator (thousands of series at fleet scale).
        m.event_to_batch.observe(o.latency_s)

    def commands_rejected(self, n: int) -> None:
        self.m.commands_rejected.inc(n)

    def broker_error(self) -> None:
        self.m.broker_errors.inc()


_SKIP_FIELDS = {
    RoundSkip.SUPERSEDED: "stale_rounds",
    RoundSkip.PAST_DEADLINE: "stale_rounds_coordinator",
    RoundSkip.FENCED: "fenced_rounds",
}
"""Counters-hash field of each skip reason (an unusable round has none, as before)."""

RETRY_AFTER_S = 1.0
"""After a failed write, hooks only buffer for this long: a broker that is down must not cost
every hook a connection attempt."""


class BrokerCounters(Observer):
    """The fleet-wide counters hash in the broker (``Keys.counters``), read by the demo's live
    view and the report; its field names are theirs (see ``gridfleet.report.model.COUNTER_KEYS``).

    Every count is an increment (HINCRBY), so several ingress partitions and the coordinator
    add up. Increments the broker could not take are kept and written on a later hook or
    :meth:`flush` once it is back: an outage costs the hash nothing it was told meanwhile.
    """

    def __init__(self, broker: redis.Redis, key: str) -> None:
        self.broker = broker
        self.key = key
        self._pending: Counter[str] = Counter()
        self._floats: defaultdict[str, float] = defaultdict(float)  # kWh fields: HINCRBYFLOAT
        self._totals: dict[str, int] = {}  # absolute fields (the collector's totals): HSET
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.enabled = True
        """False on a standby ingress: it sees every event but counts nothing on the broker
        (the active one does)."""

    @property
    def unwritten(self) -> int:
        """Increments not written yet (the broker was unreachable)."""
        return sum(self._pending.values())

    def _add(self, **increments: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._pending.update(increments)
        self._write()

    def _write(self, *, force: bool = False) -> None:
        with self._lock:
            if not (self._pending or self._floats or self._totals):
                return
            if not force and time.monotonic() < self._retry_at:
                return
            pipe = self.broker.pipeline(transaction=False)
            for name, n in self._pending.items():
                pipe.hincrby(self.key, name, n)
            for name, value in self._floats.items():
                pipe.hincrbyfloat(self.key, name, value)
            for name, value in self._totals.items():
                pipe.hset(self.key, name, value)
            try:
                pipe.execute()
            except redis.RedisError as exc:
                if not self._retry_at:
                    log.warning(
                        "counters not written (%s); kept until the broker is back: %s",
                        exc,
                        dict(self._pending),
                    )
                self._retry_at = time.monotonic() + RETRY_AFTER_S
                return
            if self._retry_at:
                log.info("broker is back: counters written: %s", dict(self._pending))
            self._pending.clear()
            self._floats.clear()
            self._totals = {}
            self._retry_at = 0.0

    def event_unusable(self, aggregator: str) -> None:
        self._add(bad_events=1)

    def events_superseded(self, n: int) -> None:
        self._add(stale_events=n)

    def trades_recorded(self, trades: int, energy_kwh: float) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._pending["trades"] += trades
            self._floats["energy_traded_kwh"] += energy_kwh
        self._write()

    def settlement_trades_recorded(self, trades: int, energy_kwh: float) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._pending["settlement_trades"] += trades
            self._floats["settlement_energy_kwh"] += energy_kwh
        self._write()

    def records_lost(self, n: int) -> None:
        self._add(lost_records=n)

    def broker_outage(self) -> None:
        self._add(broker_outages=1)

    def ingress_stopped(self, stats: CollectorStats) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._totals = {
                "ingress_events": stats.events,
                "ingress_rounds": stats.rounds,
                "skipped_empty": stats.skipped_empty,
                "late_events": stats.late_events,
                "incomplete_rounds": stats.incomplete_rounds,
                "twin_events": stats.twin_events,
                "past_slot_events": stats.past_slot_events,
                "foreign_slot_events": stats.foreign_slot_events,
            }
        self._write(force=True)
        if self._totals:
            log.error("final counters not written: %s", stats)

    def gap_closed(self, gap: Gap) -> None:
        self._add(gaps=1, **{f"{GapCause(gap.cause).value}_gap_rounds": gap.rounds})

    def round_skipped(self, reason: RoundSkip) -> None:
        name = _SKIP_FIELDS.get(RoundSkip(reason))
        if name is not None:
            self._add(**{name: 1})

    def round_lost(self, reason: RoundLoss) -> None:
        self._add(lost_rounds=1)

    def reconnect(self, who: str) -> None:
        self._add(reconnects=1)

    def round_published(self, outcome: RoundOutcome) -> None:
        o = outcome
        self._add(
            rounds=1,
            batches=o.aggregators,
            commands_sent=o.commands,
            commands_refused=o.refusals,
            hedged_shards=o.hedged,
            strategy_errors=o.errors,
            unusable_trees=o.unusable,
            **{"deadline_hit" if o.on_time else "deadline_miss": 1},
        )

    def commands_rejected(self, n: int) -> None:
        self._add(commands_rejected=n)

    def flush(self) -> None:
        self._write()
