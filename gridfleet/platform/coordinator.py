"""Coordinator: shard results in, one batch per aggregator out, before the deadline.

For each round ingress announces, it waits on the round's done list (BLPOP: no polling, no Celery
result backend) and publishes in waves: as soon as a shard is done, the batches of the
aggregators wholly in it go out (one send per wave); an aggregator split over several shards
waits for the last wave. A shard no worker has started by ``deadline - hedge margin`` it claims
and evaluates itself from the stored input (the same function the workers run); one a worker
started but has not finished by ``deadline - hedge margin / 2`` it evaluates too, so a dead or
stalled worker does not cost the tick; a worker that started it only moments before (less than
a few times the recent shards' run time) is given until then, being busy rather than stalled.
Shards done meanwhile go out in waves too. A shard reported after the last wave is ignored;
the last wave takes every shard not out yet.

Batch answers are recorded by :class:`~gridfleet.platform.responses.AnswerReader` on a thread
of their own: here for Redis; for REST the ingress records them (they arrive on the sockets it
holds).

It serves one run (:mod:`gridfleet.platform.runs`): the one it was given, else the current one,
and follows the fleet to a new run that replaces an unfinished one. Several coordinators may
run: the one holding the ``coordinator`` lease (:mod:`gridfleet.platform.lease`) answers rounds,
the others wait to take over; each wave is fenced (:func:`fenced_publish_parts`: the lease
checked, each shard's part recorded once), so no aggregator is answered twice for a round.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import orjson
import redis

from gridfleet.config import FleetConfig
from gridfleet.exchange.link import (
    ExchangeLink,
    ExchangeTarget,
    OutgoingBatch,
    answers_on_event_sockets,
    open_link,
)
from gridfleet.platform.codec import unpackb
from gridfleet.platform.evaluate import merge_fragments
from gridfleet.platform.keys import Keys
from gridfleet.platform.lease import Lease, fenced_publish_parts, lease_ttl_s
from gridfleet.platform.observers import (
    BrokerCounters,
    Observer,
    Observers,
    PrometheusObserver,
    RoundLoss,
    RoundOutcome,
    RoundSkip,
    Tally,
)
from gridfleet.platform.records import EventStream
from gridfleet.platform.responses import AnswerReader, ResponseRecorder
from gridfleet.platform.rounds import round_tag
from gridfleet.platform.runs import current_run, is_finished, wait_for_run
from gridfleet.platform.shard import (
    DONE_DROPPED,
    DONE_FINAL,
    Manifest,
    claim_shard,
    claimed_at,
    run_shard,
)
from gridfleet.runtime.metrics import Metrics

log = logging.getLogger(__name__)

STALL_FACTOR = 3.0
"""A running shard is stalled after this many times the recent shards' p90 run time..."""
STALL_FLOOR_S = 0.2
"""...and never before this long (the first rounds, or shards of a few milliseconds)."""


__all__ = ["Coordinator", "RoundOutcome", "round_tag"]


@dataclass
class _Waves:
    """One round's publication so far (see :meth:`Coordinator._publish_wave`)."""

    tag: str  # <slot>/<completion>%: the start of every batch's transaction id
    received_at: float = 0.0  # wall clock of the round's first event (for the debug timeline)
    shards: set[int] = field(default_factory=set)  # shards whose results were taken
    held: dict[str, list[bytes]] = field(default_factory=dict)  # split aggregators' fragments
    unusable: dict[str, str] = field(default_factory=dict)
    shard_seconds: list[float] = field(default_factory=list)
    commands: int = 0
    refusals: int = 0
    errors: int = 0
    published_at: float | None = None  # wall clock of the latest wave sent
    fenced: bool = False  # a part was refused: the round is another coordinator's
    # per aggregator, for the round's outcomes (see Coordinator._outcomes)
    counts: Counter[str] = field(default_factory=Counter)  # commands
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # strategy errors
    waiting: set[str] = field(default_factory=set)  # split over shards: decided in the last wave
    decided_at: dict[str, float] = field(default_factory=dict)  # wall clock its batch went out
    transaction: dict[str, str] = field(default_factory=dict)  # the batch's transaction id


class Coordinator:
    """Answers the rounds ingress announces (see the module docstring).

    What it counts goes to ``observers``: Prometheus (``metrics``), the broker's counters hash
    and ``tally`` (in-process totals, with the latest round outcomes), plus any given.
    """

    def __init__(
        self,
        config: FleetConfig,
        exchange_url: ExchangeTarget,
        broker_url: str,
        *,
        metrics: Metrics | None = None,
        link: ExchangeLink | None = None,
        observers: Sequence[Observer] = (),
        run_id: str | None = None,
    ) -> None:
        self.config = config
        self.keys = Keys(config.namespace)
        self.wanted_run = run_id  # None: serve the current run
        self.run_id: str | None = None
        self.metrics = metrics or Metrics()
        self.broker = redis.Redis.from_url(
            broker_url, socket_keepalive=True, health_check_interval=10
        )
        self.tally = Tally()
        self._shard_seconds: deque[float] = deque(maxlen=256)  # recent shard run times
        self.counters = BrokerCounters(self.broker, self.keys.counters)
        self.observers = Observers(
            [PrometheusObserver(self.metrics), self.counters, self.tally, *observers]
        )
        self.lease = Lease(
            self.broker,
            self.keys.lease("coordinator"),
            lease_ttl_s(config.tick_budget_s or 0.8),
            on_change=self._lease_changed,
        )
        self.link = link or open_link(
            exchange_url,
            config_id=config.exchange_config_id,
            on_reconnect=self.observers.reconnect,
            on_undelivered=self._undelivered,
        )
        self.stop_event = threading.Event()
        self._subscribed: set[str] = set()
        self._fleet_parts = 0  # ingress partitions' registries seen by the last refresh
        self.asset_names: dict[str, str] = {}
        self.aggregator_names: dict[str, str] = {}
        self.events = EventStream(self.broker, self.keys.events, self.observers, "coordinator")
        self.responses = ResponseRecorder(
            self.broker, self.keys, self.asset_names, self.aggregator_names, self.observers
        )
        # REST: the ingress holds the aggregators' sockets and records their answers
        self._reads_answers = not answers_on_event_sockets(exchange_url)
        self.answers = AnswerReader(self.responses, self.stop_event).start()

    # -- fleet registry (written by ingress) ----------------------------------------------------

    def learn_fleet_between_rounds(self) -> None:
        """Refresh when another ingress partition published its registry. Called while no round
        waits: subscribing to 1 000 aggregators' answer channels takes ~0.5 s, which in the
        first round that named them pushed every batch to the hedge point (750 ms at 100 000
        assets). A registry replaced in place is still learnt by the round that needs it."""
        parts = int(self.broker.hlen(self.keys.fleet))
        if parts != self._fleet_parts:
            self.refresh_fleet()

    def refresh_fleet(self) -> None:
        """Learn (new) aggregators and asset names from ingress, and subscribe to their answers."""
        parts = self.broker.hgetall(self.keys.fleet)
        self._fleet_parts = len(parts)
        new: list[str] = []
        for raw in parts.values():
            reg = orjson.loads(raw)
            self.aggregator_names.update(reg["aggregators"])
            self.asset_names.update(reg["assets"])
            self.asset_names.update(reg.get("markets", {}))
            new += [a for a in reg["aggregators"] if a not in self._subscribed]
        if new and self._reads_answers:
            self.link.subscribe_answers(new, self.answers)
        self._subscribed.update(new)

    # -- runs and the lease -------------------------------------------------------------------

    def join(self, run_id: str) -> None:
        """Serve run ``run_id``: its round list, counters and event stream."""
        self.counters.flush()
        self.run_id = run_id
        self.keys = self.keys.for_run(run_id)
        self.counters.key = self.keys.counters
        self.responses.keys = self.keys
        self.events.stream = self.keys.events
        log.info("coordinator serving run %s", run_id)

    def _undelivered(self, aggregator: str, transaction_id: str) -> None:
        """The exchange never took this batch (the link logged why): the round is lost for
        that aggregator."""
        self.observers.round_lost(RoundLoss.EXCHANGE)

    def _lease_changed(self, held: bool) -> None:
        if held:
            log.warning("coordinator lease taken: this coordinator answers rounds now")
        else:
            log.warning("coordinator lease lost: standing by")

    def _run_over(self) -> bool:
        """The run is finished, or (not given one) a new run replaced it: switch to that one."""
        if is_finished(self.broker, self.keys):
            log.info("run %s finished; coordinator stops", self.run_id)
            return True
        if self.wanted_run is None:
            now = current_run(self.broker, self.keys)
            if now is not None and now != self.run_id and not self.broker.llen(self.keys.rounds):
                log.warning("run %s was replaced by run %s", self.run_id, now)
                self.join(now)
        return False

    # -- rounds -------------------------------------------------------------------------------

    def run(self, max_rounds: int | None = None) -> None:
        run_id = wait_for_run(self.broker, self.keys, self.wanted_run, self.stop_event)
        if run_id is None:
            return
        self.join(run_id)
        self.lease.keep()
        try:
            self.link.warm_up()
        except (redis.RedisError, OSError) as exc:  # the first round's send says it again
            log.info("exchange connection not opened ahead of the first round: %s", exc)
        try:
            self._loop(max_rounds)
        finally:
            self.lease.release()

    def _loop(self, max_rounds: int | None) -> None:
        handled = 0
        while not self.stop_event.is_set():
            self.metrics.beat()
            try:
                if not self.lease.held:
                    # Standing by: another coordinator answers; take over when its lease expires.
                    self.stop_event.wait(self.lease.ttl_s / 6)
                    if self._run_over():
                        break
                    continue
                item = self.broker.blpop([self.keys.rounds], timeout=0.5)
                self.observers.flush()
                self.events.flush()  # round records a broker outage held back
                if item is None:
                    if self._run_over():
                        break
                    self.learn_fleet_between_rounds()
                    continue
            except redis.ConnectionError as exc:
                log.error("broker unreachable (%s); retrying", exc)
                self.observers.broker_error()
                self.stop_event.wait(0.5)
                continue
            round_id = cast(bytes, item[1]).decode()
            try:
                self.handle_round(round_id)
            except (LookupError, redis.RedisError) as exc:
                log.error("round %s lost: %s", round_id, exc)
                self.observers.round_lost(RoundLoss.COORDINATOR)
            handled += 1
            if max_rounds is not None and handled >= max_rounds:
                break

    def handle_round(self, round_id: str) -> RoundOutcome | None:
        raw = self.broker.get(self.keys.manifest(round_id))
        if raw is None:
            raise LookupError("manifest expired before the coordinator saw it")
        manifest = Manifest.unpack(cast(bytes, raw))
        if not self._subscribed.issuperset(manifest.aggregators):
            self.refresh_fleet()
        if time.time() > manifest.deadline and self.broker.llen(self.keys.rounds) > 0:
            # Behind: this round's tick has passed and newer rounds wait; answering it would
            # only push them past their own deadlines.
            self.observers.round_skipped(RoundSkip.PAST_DEADLINE)
            log.warning("round %s skipped: past its deadline with newer rounds waiting", round_id)
            return None
        done: set[int] = set()
        hedge_at = manifest.deadline - self.config.hedge_margin_s
        done_key = self.keys.done(round_id)
        waves = _Waves(
            round_tag(manifest.ctx.market_slot, manifest.ctx.tick_index), manifest.received_at
        )
        if not manifest.final:
            followed = self._follow_open_round(round_id, manifest, done, waves, hedge_at)
            if followed is None:
                return None  # dropped by ingress: a newer round is due
            manifest = followed
            if not self._subscribed.issuperset(manifest.aggregators):
                self.refresh_fleet()
        # Each shard's aggregators go out as soon as it is done: the first ones need not wait
        # for the round's slowest shard, and a REST link's POSTs spread over the round.
        while len(done) < manifest.shards and time.time() < hedge_at:
            self._wait_any(done_key, done, hedge_at)
            if len(done) < manifest.shards:
                self._publish_wave(round_id, waves, done - waves.shards)
        hedged: list[int] = []
        # Shards no worker has started: take them (a worker that gets one later skips it).
        # Each one's aggregators go out when it is done, with what the workers finished meanwhile.
        for shard in sorted(set(range(manifest.shards)) - done):
            if claim_shard(self.broker, self.keys, round_id, shard, "coordinator"):
                self._hedge(round_id, shard, "no worker had started it")
                hedged.append(shard)
                self._drain_done(done_key, done)
                self._publish_wave(round_id, waves, done - waves.shards)
        self._await_running(round_id, manifest, done_key, done, hedged, waves)
        # The last wave: every shard not out yet, and the aggregators split over shards.
        # Results reported after this point are ignored: this round's batches are decided.
        self._publish_wave(round_id, waves, set(range(manifest.shards)) - waves.shards, last=True)
        if waves.published_at is None:
            return None  # fenced: another coordinator answers (or answered) this round
        latency = waves.published_at - manifest.received_at
        outcome = RoundOutcome(
            round_id=round_id,
            # every aggregator answered (an empty batch is not sent, but it is its answer)
            aggregators=len(set(manifest.aggregators) - waves.unusable.keys()),
            shards=manifest.shards,
            hedged=len(hedged),
            commands=waves.commands,
            refusals=waves.refusals,
            errors=waves.errors,
            unusable=len(waves.unusable),
            latency_s=latency,
            budget_s=manifest.deadline - manifest.received_at,
            on_time=waves.published_at <= manifest.deadline,
            shard_seconds=waves.shard_seconds,
        )
        self._record(outcome, manifest, self._outcomes(waves, manifest))
        return outcome

    def _publish_wave(
        self, round_id: str, waves: _Waves, shards: set[int], *, last: bool = False
    ) -> None:
        """Publish the batches of the aggregators whole in ``shards`` (and, the ``last`` time,
        of those split over several shards), fenced by the lease: each part at most once."""
        order = sorted(shards)
        outputs = (
            self.broker.mget([self.keys.shard_output(round_id, s) for s in order]) if order else []
        )
        waves.shards.update(order)
        timeline: list[str] | None = (  # per shard: started+ran, ms from the round's first event
            [] if log.isEnabledFor(logging.DEBUG) else None
        )
        ready: dict[str, list[bytes]] = {}
        decided: set[str] = set()  # aggregators whose batch this wave settles
        for raw_out in outputs:
            if raw_out is None:
                continue
            out = unpackb(cast(bytes, raw_out))
            waves.commands += out["commands"]
            waves.refusals += len(out["refusals"])
            waves.errors += len(out["errors"])
            waves.unusable.update(out.get("unusable", {}))
            waves.shard_seconds.append(out["duration_s"])
            self._shard_seconds.append(out["duration_s"])
            if timeline is not None:
                timeline.append(
                    f"{(out['started_at'] - waves.received_at) * 1e3:.0f}"
                    f"+{out['duration_s'] * 1e3:.0f}"
                )
            waves.refused.update(r["aggregator"] for r in out["refusals"])
            waves.failed.update(r["aggregator"] for r in out["errors"])
            split = set(out.get("split", ()))
            counts = out.get("counts", {})
            waves.counts.update(counts)
            waves.waiting |= split
            decided.update(a for a in counts if a not in waves.waiting)
            for agg, frag in out["fragments"].items():
                if agg in split or agg in waves.held:
                    waves.held.setdefault(agg, []).append(frag)
                else:
                    ready.setdefault(agg, []).append(frag)
        if last:
            decided |= waves.waiting
            for agg, frags in waves.held.items():
                ready.setdefault(agg, []).extend(frags)
        for agg in waves.unusable:  # skipped this tick (the worker logged why)
            ready.pop(agg, None)
        parts = [self.keys.published(round_id, f"s{s}") for s in order]
        if last:
            parts.append(self.keys.published(round_id, "last"))
        if not parts or waves.fenced:
            return
        verdicts = fenced_publish_parts(self.broker, self.lease, parts)
        if any(v != 1 for v in verdicts):
            waves.fenced = True
            self.observers.round_skipped(RoundSkip.FENCED)
            log.warning(
                "round %s: %s not published: %s",
                round_id,
                "the rest" if waves.published_at is not None else "nothing",
                "the coordinator lease is another's"
                if 0 in verdicts
                else "already published (before a takeover)",
            )
            return
        bodies = [
            OutgoingBatch(agg, f"{waves.tag}/{uuid.uuid4()}", merge_fragments(frags))
            for agg, frags in ready.items()
        ]
        if bodies:
            self.link.send_batches(bodies)
        waves.published_at = now = time.time()
        if timeline is not None:
            log.debug(
                "round %s: wave of shards %s (started+ran ms: %s), %d batches out at %.0f ms",
                round_id,
                order,
                " ".join(timeline),
                len(bodies),
                (now - waves.received_at) * 1e3,
            )
        waves.decided_at.update(dict.fromkeys(decided, now))
        waves.transaction.update((b.aggregator_uuid, b.transaction_id) for b in bodies)

    def _wait_any(self, done_key: str, done: set[int], until: float) -> set[int]:
        """Until a worker reports a shard done (and take any others reported with it); the
        marks found on the way (:data:`DONE_FINAL`, :data:`DONE_DROPPED`)."""
        remaining = until - time.time()
        if remaining <= 0:
            return set()
        got = self.broker.blpop([done_key], timeout=max(0.01, min(remaining, 1.0)))
        if got is None:
            return set()
        return _took([cast(bytes, got[1])], done) | self._drain_done(done_key, done)

    def _follow_open_round(
        self, round_id: str, manifest: Manifest, done: set[int], waves: _Waves, until: float
    ) -> Manifest | None:
        """A round announced while its events still arrive: publish each shard done until the
        ingress marks the manifest final; None if it drops the round instead.

        At ``until`` (the hedge point) without that mark the round goes on with the shards
        out so far (an ingress that stalled mid-round sends the rest too late to matter).
        """
        done_key = self.keys.done(round_id)
        while time.time() < until:
            before = len(done)
            marks = self._wait_any(done_key, done, until)
            if DONE_DROPPED in marks:
                log.warning("round %s: dropped by ingress (a newer round is due)", round_id)
                return None
            if len(done) > before:
                self._publish_wave(round_id, waves, done - waves.shards)
            if DONE_FINAL in marks:
                break
        raw = self.broker.get(self.keys.manifest(round_id))
        final = Manifest.unpack(cast(bytes, raw)) if raw is not None else manifest
        if not final.final:
            log.warning(
                "round %s: its events were still arriving at the hedge point; answering the %d"
                " shards sent so far",
                round_id,
                final.shards,
            )
        return final

    def _await_running(
        self,
        round_id: str,
        manifest: Manifest,
        done_key: str,
        done: set[int],
        hedged: list[int],
        waves: _Waves,
    ) -> None:
        """Wait for the shards workers are running; run one here too once it looks stalled.

        A running shard is hedged at the later of ``deadline - hedge margin / 2`` and its
        claim + :meth:`_stall_after`: before that its worker is most likely alive and about to
        finish, and a second copy on the same cores would only slow both down (a copy started
        now cannot finish before a healthy worker that started earlier).
        """
        last_call = manifest.deadline - self.config.hedge_margin_s / 2
        stall = self._stall_after()
        started: dict[int, float] = {}  # a claim is set once: read each shard's once
        while True:
            running = sorted(set(range(manifest.shards)) - done - set(hedged))
            if not running:
                return
            unknown = [s for s in running if s not in started]
            if unknown:
                started.update(claimed_at(self.broker, self.keys, round_id, unknown))
            due = {s: max(last_call, started.get(s, 0.0) + stall) for s in running}
            now = time.time()
            overdue = [s for s in running if due[s] <= now]
            for shard in overdue:
                self._hedge(round_id, shard, "its worker had not finished")
                hedged.append(shard)
                self._drain_done(done_key, done)
                self._publish_wave(round_id, waves, done - waves.shards)
            if overdue:
                continue
            before = len(done)
            self._wait_any(done_key, done, min(due.values()))
            if len(done) > before and len(done) < manifest.shards:
                self._publish_wave(round_id, waves, done - waves.shards)

    def _stall_after(self) -> float:
        """How long a worker may run a shard before it counts as stalled: a few times the
        recent shards' p90, never under :data:`STALL_FLOOR_S`."""
        if not self._shard_seconds:
            return STALL_FLOOR_S
        recent = sorted(self._shard_seconds)
        p90 = recent[min(len(recent) - 1, int(0.9 * len(recent)))]
        return max(STALL_FLOOR_S, STALL_FACTOR * p90)

    def _drain_done(self, done_key: str, done: set[int]) -> set[int]:
        """Take what workers finished meanwhile, without waiting (and the marks found)."""
        return _took(cast(list[bytes], self.broker.lpop(done_key, 1000) or []), done)

    def _hedge(self, round_id: str, shard: int, why: str) -> None:
        run_shard(self.broker, self.keys, round_id, shard, worker="coordinator-hedge")
        log.warning("round %s: shard %d hedged by the coordinator (%s)", round_id, shard, why)

    @staticmethod
    def _outcomes(waves: _Waves, manifest: Manifest) -> list[list[object]]:
        """The round for each aggregator, as :data:`~gridfleet.platform.records.OUTCOME_FIELDS`:
        its event's and its batch's time (ms after the round's first event), what it sent,
        and how it ended: ``sent``, ``empty`` (nothing to send), ``unusable`` (its event was
        not), ``unsent`` (another coordinator took the round over), ``missing`` (no event)."""
        t0 = manifest.received_at
        arrived = dict(zip(manifest.aggregators, manifest.arrived_at, strict=False))

        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - t0) * 1e3, 1)

        out: list[list[object]] = []
        for agg in manifest.aggregators:
            at = waves.decided_at.get(agg)
            if agg in waves.unusable:
                status, at = "unusable", None
            elif at is None:
                status = "unsent"
            else:
                status = "sent" if agg in waves.transaction else "empty"
            out.append(
                [
                    agg,
                    ms(arrived.get(agg, t0)),
                    ms(at),
                    waves.counts[agg],
                    waves.refused[agg],
                    waves.failed[agg],
                    status,
                    None if at is None else at <= manifest.deadline,
                    waves.transaction.get(agg),
                ]
            )
        out += [
            [a, None, None, 0, 0, 0, "missing", None, None] for a in manifest.skipped_aggregators
        ]
        return out

    def _record(self, o: RoundOutcome, manifest: Manifest, outcomes: list[list[object]]) -> None:
        """The round's record on the event stream (the report and the ledger read it); its
        counts go to the observers."""
        record = {
            "kind": "round",
            "round": o.round_id.split(":", 1)[-1],
            "slot": manifest.ctx.market_slot,
            "tick": manifest.ctx.tick_index,
            "aggregators": o.aggregators,
            "shards": o.shards,
            "hedged": o.hedged,
            "commands": o.commands,
            "refused": o.refusals,
            "strategy_errors": o.errors,
            "latency_ms": round(o.latency_s * 1e3, 2),
            "budget_ms": round(o.budget_s * 1e3, 2),
            "on_time": o.on_time,
            "shard_ms_max": round(max(o.shard_seconds, default=0.0) * 1e3, 2),
            "received_at": manifest.received_at,
            "outcomes": outcomes,
        }
        self.events.add(record)
        self.events.flush()
        self.observers.round_published(o)
        log.info(
            "round %s: %d batches, %d commands, %d refused, %d hedged, %.0f ms of %.0f ms",
            record["round"],
            o.aggregators,
            o.commands,
            o.refusals,
            o.hedged,
            o.latency_s * 1e3,
            o.budget_s * 1e3,
            extra={"slot": manifest.ctx.market_slot, "tick": manifest.ctx.tick_index},
        )

    # -- batch responses ----------------------------------------------------------------------

    def handle_response(self, raw: bytes) -> int:
        """Record one batch response; returns how many commands it rejected."""
        return self.responses.record(raw)

    def close(self) -> None:
        self.stop_event.set()
        self.lease.release()
        self.link.close()
        self.broker.close()


def _took(items: Sequence[bytes], done: set[int]) -> set[int]:
    """Shard numbers from a done list into ``done``; the marks among them returned."""
    marks = set()
    for raw in items:
        n = int(raw)
        if n >= 0:
            done.add(n)
        else:
            marks.add(n)
    return marks
