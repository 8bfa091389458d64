"""Ingress: exchange events in, one Celery task per shard out.

For every event round it reads each event's header (kind, slot, tick, rates) and leaves its
tree as raw JSON, coalesces the round's events across aggregators, packs whole aggregators' trees
into shards, writes the shard inputs and a manifest to Redis, sends one task per shard (keys, not
payloads) and tells the coordinator the round is under way. The workers parse the trees and
derive each asset's context (kind, energies, fees along its path), once per tree, in parallel:
at 100 000 assets parsing is most of a round's work and one ingress process could not keep up.

Several ingress processes can split a fleet: ``partition=(i, n)`` takes the aggregators whose
position in the fleet file is ``i`` modulo ``n``. Two (or more) may run for one partition: all
are subscribed and collect every round, the one holding the partition's lease
(:mod:`gridfleet.platform.lease`) sends them; a standby takes over, from the current round,
when the active one's lease expires. An ingress joins the fleet's current run, or starts one
(:mod:`gridfleet.platform.runs`).

This module is the loop. Its parts: :mod:`~gridfleet.platform.shard_plan` (which trees go into
which shard), :mod:`~gridfleet.platform.tick_clock` (the round budget),
:mod:`~gridfleet.platform.records` (trade and finish records),
:mod:`~gridfleet.platform.broker_recovery` (a broker outage),
:mod:`~gridfleet.platform.gaps` (rounds missed while the exchange was silent) and
:mod:`~gridfleet.platform.observers` (everything it counts).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence

import kombu.exceptions
import orjson
import redis

from gridfleet.config import FleetConfig
from gridfleet.exchange.link import (
    ExchangeLink,
    ExchangeTarget,
    answers_on_event_sockets,
    open_link,
)
from gridfleet.exchange.messages import ProtocolError, decode_event_for_ingress
from gridfleet.platform.broker_recovery import BrokerRecovery
from gridfleet.platform.collector import PendingRound, RoundCollector
from gridfleet.platform.dispatch import QUEUE, ShardDispatcher
from gridfleet.platform.fleet import Fleet, FleetPlan, connect_fleet
from gridfleet.platform.gaps import ExchangeGaps
from gridfleet.platform.keys import Keys
from gridfleet.platform.lease import Lease, lease_ttl_s
from gridfleet.platform.observers import (
    BrokerCounters,
    Gap,
    Observer,
    Observers,
    PrometheusObserver,
    RoundSkip,
    Tally,
)
from gridfleet.platform.records import RecordWriter
from gridfleet.platform.responses import AnswerReader, ResponseRecorder
from gridfleet.platform.rounds import RoundError, RoundKey, round_context
from gridfleet.platform.runs import join_run
from gridfleet.platform.shard import (
    DONE_DROPPED,
    DONE_FINAL,
    ROUND_TTL_S,
    Manifest,
    mark_done,
    publish_spec,
    write_round,
)
from gridfleet.platform.shard_inputs import ShardInputsMode, open_input_store
from gridfleet.platform.shard_plan import (
    StreamedRound,
    cut_shards,
    peek_round,
    plan_shards,
    shard_inputs,
)
from gridfleet.platform.tick_clock import TickClock
from gridfleet.runtime.interpreter import freeze_start_up
from gridfleet.runtime.metrics import Metrics
from gridfleet.strategies.context import TickContext

log = logging.getLogger(__name__)

MIN_ROUND_WAIT_S = 0.3
ROUND_WAIT_SHARE = 0.6
"""A round is closed at the latest this share of its budget after its first event (or after
the coalescing window's quiet gap, or when every aggregator reported, whichever is first)."""

RECORDS_MAX_WAIT_S = 1.0
"""Trade records and counters are written between rounds, and at least this often."""

BROKER_ERRORS = (redis.RedisError, kombu.exceptions.OperationalError)


class Ingress:
    """The loop: read events, collect rounds, send their shards (see the module docstring).

    What it counts goes to ``observers``: Prometheus (``metrics``), the broker's counters hash
    and ``tally`` (in-process totals), plus any ``observers`` given.
    """

    def __init__(
        self,
        config: FleetConfig,
        exchange_url: ExchangeTarget,
        broker_url: str,
        *,
        partition: tuple[int, int] = (0, 1),
        metrics: Metrics | None = None,
        plan: FleetPlan | None = None,
        link: ExchangeLink | None = None,
        observers: Sequence[Observer] = (),
        run_id: str | None = None,
        shard_inputs: ShardInputsMode = "auto",
    ) -> None:
        from gridfleet.platform.fleet import plan_fleet

        self.config = config
        self.keys = Keys(config.namespace)
        self.plan = plan or plan_fleet(config)
        i, n = partition
        self.plan.aggregators = [a for k, a in enumerate(self.plan.aggregators) if k % n == i]
        self.partition = partition
        self.metrics = metrics or Metrics()
        self.broker = redis.Redis.from_url(
            broker_url, socket_keepalive=True, health_check_interval=10
        )
        self.tally = Tally()
        self.counters = BrokerCounters(self.broker, self.keys.counters)
        self.observers = Observers(
            [PrometheusObserver(self.metrics), self.counters, self.tally, *observers]
        )
        self.target = exchange_url
        self.answers: AnswerReader | None = None  # REST only: see connect()
        self.link = link or open_link(
            exchange_url, config_id=config.exchange_config_id, on_reconnect=self._reconnected
        )
        self.dispatcher = ShardDispatcher(broker_url)
        self.inputs = open_input_store(shard_inputs, broker_url)
        self.wanted_run = run_id  # None: join the current run, or start one
        self.run_id = run_id or uuid.uuid4().hex[:8]  # the run's, once connect() joined it
        self.lease = Lease(
            self.broker,
            self.keys.lease(f"ingress:p{i}"),
            lease_ttl_s(config.tick_budget_s or 0.8),
            on_change=self._lease_changed,
        )
        self._leased = False  # whether connect() started competing for the lease
        self.clock = TickClock()
        self.gaps = ExchangeGaps()
        self.fleet: Fleet | None = None
        self._order: dict[str, int] = {}  # aggregator uuid -> position in the fleet file
        self._sizes: dict[str, int] = {}  # aggregator uuid -> assets it trades
        self._streams: dict[str, StreamedRound] = {}  # pending round id -> what went ahead
        self.records = RecordWriter(self.broker, self.keys.events, self.observers)
        self.recovery = BrokerRecovery(self._publish_fleet, self.observers)
        self.spec_version = ""
        self._events: queue.SimpleQueue[tuple[str, bytes, float, float]] = queue.SimpleQueue()
        self.stop_event = threading.Event()
        self._last_slot: str | None = None  # trade events carry no slot; they follow its rounds

    @property
    def active(self) -> bool:
        """Whether this ingress sends rounds: it holds its partition's lease (or, never having
        competed for one, as in unit tests, it is the only one)."""
        return self.lease.held or not self._leased

    def _lease_changed(self, held: bool) -> None:
        self.counters.enabled = held  # a standby counts nothing on the broker
        if held:
            log.warning("ingress lease taken: this ingress sends rounds from the current one")
        else:
            log.warning("ingress lease lost: standing by (subscribed, sending nothing)")

    def _reconnected(self, who: str) -> None:
        self.observers.reconnect(who)
        log.warning(
            "exchange reader %s reconnected: events published meanwhile are lost and counted as missing rounds",
            who,
        )

    # -- set-up -------------------------------------------------------------------------------

    def connect(self) -> Fleet:
        fleet = connect_fleet(self.link, self.plan)
        self.fleet = fleet
        self.run_id, started = join_run(self.broker, self.keys, self.wanted_run)
        self.keys = self.keys.for_run(self.run_id)
        self.counters.key = self.keys.counters
        self.records.events.stream = self.keys.events
        self.records.settlement_orders = self.keys.settlement_orders
        log.info("%s run %s", "started" if started else "joined", self.run_id)
        self._order = {
            fleet.aggregator_uuid[a.spec.name]: i for i, a in enumerate(self.plan.aggregators)
        }
        self._sizes = {
            fleet.aggregator_uuid[a.spec.name]: len(a.assets) for a in self.plan.aggregators
        }
        self._publish_fleet()
        self.dispatcher.warm_up()
        self.link.subscribe_events(fleet.aggregator_uuid.values(), self._on_event)
        if answers_on_event_sockets(self.target):
            # REST: answers come on the sockets this ingress holds (the coordinator opens none)
            recorder = ResponseRecorder(
                self.broker,
                self.keys,
                {
                    **{u: n for n, u in fleet.asset_uuid.items()},
                    **{u: n for n, u in fleet.market_uuid.items()},
                },
                dict(fleet.aggregator_name),
                self.observers,
            )
            self.answers = AnswerReader(recorder, self.stop_event, accept=lambda: self.active)
            self.link.subscribe_answers(fleet.aggregator_uuid.values(), self.answers.start())
        # Subscribed first: a standby collects every round, so it can take over at the next.
        self.counters.enabled = False
        self._leased = True
        if not self.lease.step():
            log.info("ingress lease held by %s: standing by", self.lease.holder())
        self.lease.keep()
        return fleet

    def _publish_fleet(self) -> None:
        """Write what workers and the coordinator read (again after the broker lost it)."""
        fleet = self.fleet
        assert fleet is not None
        self.spec_version = publish_spec(self.broker, self.keys, fleet.spec)
        registry = {
            "aggregators": fleet.aggregator_name,
            "assets": {u: n for n, u in fleet.asset_uuid.items()},
            "markets": {u: n for n, u in fleet.market_uuid.items()},
        }
        self.broker.hset(self.keys.fleet, f"p{self.partition[0]}", orjson.dumps(registry))

    def _on_event(self, aggregator: str, raw: bytes, t: float) -> None:
        # Runs on a reader thread: only hand the bytes over (a slow reader gets dropped by Redis).
        self._events.put((aggregator, raw, t, time.time()))

    # -- the loop -----------------------------------------------------------------------------

    def run(self, max_rounds: int | None = None) -> None:
        fleet = self.fleet or self.connect()
        freeze_start_up()
        collector = RoundCollector(fleet.aggregator_uuid.values(), self.config.coalesce_window_s)
        log.info(
            "ingress running (run %s, %s): %d aggregators, %d assets",
            self.run_id,
            "active" if self.active else "standby",
            len(fleet.aggregator_uuid),
            self.plan.asset_count,
        )
        dispatched = 0
        flushed_at = time.monotonic()
        while not self.stop_event.is_set():
            self.metrics.beat()
            # Full shards stream out while a round's events arrive, so waiting for its last
            # events costs only the tail; splitting it into follow-up rounds costs a whole
            # coordinator pass each. A 100 000-asset round takes ~400 ms to arrive.
            collector.max_wait_s = max(
                MIN_ROUND_WAIT_S,
                ROUND_WAIT_SHARE * self.clock.budget(self.config.tick_budget_s),
            )
            due = collector.next_due()
            timeout = 0.5 if due is None else max(0.0, due - time.monotonic())
            try:
                item = self._events.get(timeout=timeout)
            except queue.Empty:
                item = None
            batch = [item] if item else []
            while True:  # drain what is there: the rest of the round is usually already queued
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            keys = [peek_round(raw) for _, raw, _, _ in batch]
            newest = max((k for k in keys if k and collector.plausible(k[0])), default=None)
            stale = 0
            for (aggregator, raw, t_mono, t_wall), key in zip(batch, keys, strict=True):
                if newest is not None and key is not None and key < newest:
                    # A newer round is already here: the exchange has moved on, skip the parse.
                    stale += 1
                    continue
                self._take(collector, aggregator, raw, t_mono, t_wall)
            if stale:
                self.observers.events_superseded(stale)
            # Decide which rounds are complete right after reading: time spent sending below
            # must not count as a quiet gap in the exchange's events.
            ready = collector.ready()
            active = self.active
            if not active:
                # Standing by: the rounds are collected (and dropped) so that a takeover starts
                # warm, at the next round; the active ingress sends them and records trades.
                ready = []
                self.records.discard()
            for pending in self._newest_only(ready):
                try:
                    gap = self.recovery.before_send()
                    if gap is not None:
                        self.records.add(gap.as_record())
                    self._dispatch(pending)
                except BROKER_ERRORS as exc:
                    at = pending.key
                    self.recovery.lost(pending.id, exc, at.market_slot, at.tick_index)
                dispatched += 1
            if self.recovery.ok and active:
                for pending in list(collector.pending.values()):
                    try:
                        self._stream(pending)
                    except BROKER_ERRORS as exc:
                        log.error("round %s: early shards not sent (%s)", pending.id, exc)
            # Records and counters wait while a round's events come in: summing a settling
            # tick's trade records (~35 ms at 100 000 assets) held up that round's shards.
            now = time.monotonic()
            if not collector.pending or now - flushed_at >= RECORDS_MAX_WAIT_S:
                self.records.flush()
                self.observers.flush()
                flushed_at = now
            if collector.all_finished:
                log.info("every aggregator got the finish event; ingress stops")
                # Not a count: the coordinator stops on it.
                self.broker.hset(self.keys.counters, "finished", 1)
                break
            if max_rounds is not None and dispatched >= max_rounds:
                break
        self.records.flush()
        self.observers.ingress_stopped(collector.stats)

    def _newest_only(self, ready: list[PendingRound]) -> list[PendingRound]:
        """Behind: answer only the newest round; older ones would land after their tick."""
        if len(ready) <= 1:
            return ready
        newest = max(p.key for p in ready)
        for p in ready:
            if p.key < newest:
                self.observers.round_skipped(RoundSkip.SUPERSEDED)
                dropped = self._streams.pop(p.id, None)
                if dropped is not None:  # the coordinator follows it: no more of it will come
                    mark_done(self.broker, self.keys, dropped.manifest.round_id, DONE_DROPPED)
                log.warning(
                    "round %s dropped: a newer round is already due",
                    p.id,
                    extra={"slot": p.key.market_slot, "tick": p.key.tick_index},
                )
        return [p for p in ready if p.key == newest]

    def _take(
        self, collector: RoundCollector, aggregator: str, raw: bytes, t_mono: float, t_wall: float
    ) -> None:
        try:
            event = decode_event_for_ingress(raw)
        except ProtocolError as exc:
            self.observers.event_unusable(aggregator)
            log.error(
                "aggregator %s: unusable event skipped: %s",
                aggregator,
                exc,
                extra={"aggregator": aggregator},
            )
            return
        kind = type(event).__name__.removesuffix("Event").lower()
        self.observers.event_received(kind)
        out = collector.add(aggregator, event, t_mono, t_wall)
        if out.round is not None:
            # Only events the collector took teach the clock and the gap count: a stray event
            # for a slot far ahead must not look like 26 million missed rounds.
            completion = getattr(event, "slot_completion", "")
            self.clock.observe(out.round.market_slot, completion, t_mono)
            self._observe_round(out.round, t_mono)
        for agg, trade_event in out.trades:
            self.records.trade(agg, trade_event, self._last_slot)
        for agg in out.finished:
            self.records.finish(agg)

    def _observe_round(self, key: RoundKey, at: float) -> None:
        """Count the rounds the exchange sent while no event reached this ingress."""
        gap = self.gaps.observe(key, at)
        if gap is None:
            return
        self._gap_closed(gap)

    def _gap_closed(self, gap: Gap) -> None:
        self.observers.gap_closed(gap)
        if self.active:
            self.records.add(gap.as_record())
        log.log(
            logging.WARNING if self.active else logging.INFO,
            "exchange gap closed: %.1f s without events, %d rounds missed (%s .. %s)",
            gap.seconds,
            gap.rounds,
            gap.first,
            gap.last,
        )

    def _claim(self, round_id: str) -> bool:
        """Whether this ingress is the first to send round ``round_id`` (after a takeover, the
        one before may have sent it)."""
        if self.broker.set(
            self.keys.dispatched(round_id), self.lease.token, nx=True, ex=ROUND_TTL_S
        ):
            return True
        log.warning("round %s already sent by another ingress; not sent again", round_id)
        return False

    def _announce(self, round_id: str) -> None:
        """Hand the round to the coordinator (its queue of rounds)."""
        depth = self.broker.rpush(self.keys.rounds, round_id)
        if depth > 3:
            log.warning("the coordinator is %d rounds behind", depth - 1)

    def _round_id(self, pending: PendingRound) -> str:
        """The same for every ingress of one partition in one run (so takeovers are fenced)."""
        i, n = self.partition
        return f"{self.run_id}:{pending.id}" if n == 1 else f"{self.run_id}.p{i}:{pending.id}"

    def _stream(self, pending: PendingRound) -> None:
        """Send the full shards of a round whose events are still arriving.

        At 100 000 assets the exchange's events take a few hundred milliseconds to arrive;
        workers start on the first trees meanwhile instead of waiting for the last. The round's
        remaining shards, and the manifest the coordinator waits on, follow in :meth:`_dispatch`.
        """
        size = self.config.shard_size
        if pending.key.tick_index == 0 and not pending.market_event:
            # The slot's first round is a market event round; its early shards must be
            # evaluated as one even if a 0 % tick overtook every market event so far.
            return
        streamed = self._streams.get(pending.id)
        sent = streamed.sent if streamed else set()
        waiting = [(a, e) for a, e in pending.events.items() if a not in sent]
        if sum(self._sizes.get(a, 0) for a, _ in waiting) <= size:
            return
        plan = plan_shards([a for a, _ in waiting], self._sizes, size)
        # The last shard may still grow; so may an aggregator split across shards.
        last = {a for a, _, _ in plan[-1]}
        plan = [group for group in plan if not any(a in last for a, _, _ in group)]
        if not plan:
            return
        shards = shard_inputs(plan, pending.events)
        if streamed is None:
            try:
                _, ctx = round_context(waiting)
            except RoundError:
                return  # _dispatch says why
            manifest = self._manifest(pending, ctx, shards=0)
            manifest.final = False
            if not self._claim(manifest.round_id):
                return
            streamed = self._streams[pending.id] = StreamedRound(manifest)
        first = streamed.shards
        streamed.manifest.shards = first + len(shards)
        write_round(self.broker, self.keys, streamed.manifest, shards, first, self.inputs)
        numbers = range(first, first + len(shards))
        self.dispatcher.send(self.keys.ns, streamed.manifest.round_id, numbers, streamed.deadline)
        # Counted as out only once written and sent: after a broker error they go with the rest.
        streamed.shards += len(shards)
        streamed.sent.update(a for shard in shards for a in shard.aggregators)
        if first == 0:
            # The coordinator starts now: each early shard's aggregators are answered when it is
            # done, not when the round's last event is in.
            self._announce(streamed.manifest.round_id)
        log.debug(
            "round %s: shards %d-%d sent ahead at %.0f ms",
            pending.id,
            first,
            streamed.shards - 1,
            (time.time() - pending.first_wall) * 1e3,
        )

    def _manifest(self, pending: PendingRound, ctx: TickContext, shards: int) -> Manifest:
        assert self.fleet is not None
        missing = (
            []
            if pending.seq
            else sorted(set(self.fleet.aggregator_uuid.values()) - pending.events.keys())
        )
        budget = self.clock.budget(self.config.tick_budget_s)
        aggregators = sorted(pending.events)
        return Manifest(
            round_id=self._round_id(pending),
            ctx=ctx,
            spec_version=self.spec_version,
            shards=shards,
            aggregators=aggregators,
            received_at=pending.first_wall,
            deadline=pending.first_wall + budget,
            skipped_aggregators=missing,
            arrived_at=[pending.arrived.get(a, pending.first_wall) for a in aggregators],
        )

    def _dispatch(self, pending: PendingRound) -> None:
        t0 = time.perf_counter()
        order = self._order
        events = sorted(pending.events.items(), key=lambda kv: order.get(kv[0], len(order)))
        streamed = self._streams.pop(pending.id, None)
        try:
            key, ctx = round_context(events)
        except RoundError as exc:
            self.observers.round_skipped(RoundSkip.UNUSABLE)
            log.warning("round %s skipped: %s", pending.key.id, exc)
            return
        self._last_slot = key.market_slot
        first = 0
        if streamed is not None:
            # Its first shards are out: the rest keep the context and deadline they were sent with.
            ctx, first = streamed.manifest.ctx, streamed.shards
            events = [(a, e) for a, e in events if a not in streamed.sent]
        if streamed is None and not self._claim(self._round_id(pending)):
            return
        shards = cut_shards(events, self._sizes, self.config.shard_size) if events else []
        manifest = self._manifest(pending, ctx, shards=first + len(shards))
        if streamed is not None:
            manifest.received_at = streamed.manifest.received_at
            manifest.deadline = streamed.manifest.deadline
        round_id = manifest.round_id
        missing = manifest.skipped_aggregators
        budget = manifest.deadline - manifest.received_at
        write_round(self.broker, self.keys, manifest, shards, first, self.inputs)
        numbers = range(first, first + len(shards))
        self.dispatcher.send(self.keys.ns, round_id, numbers, manifest.deadline)
        if streamed is None:
            self._announce(round_id)
        else:
            mark_done(self.broker, self.keys, round_id, DONE_FINAL)
        self.observers.round_dispatched(manifest.shards, self.broker.llen(QUEUE))
        if missing:
            log.warning(
                "round %s: no event from %d aggregators (lost or late)",
                key.id,
                len(missing),
                extra={"slot": key.market_slot, "tick": key.tick_index},
            )
        log.debug(
            "round %s: %d trees over %.0f ms (widest gap %.0f ms) in %d shards, dispatched in"
            " %.1f ms (%d sent ahead; budget %.0f ms)",
            pending.id,
            len(pending.events),
            (pending.last_at - pending.first_at) * 1e3,
            pending.widest_gap * 1e3,
            manifest.shards,
            (time.perf_counter() - t0) * 1e3,
            first,
            budget * 1e3,
            extra={"slot": key.market_slot, "tick": key.tick_index},
        )

    @property
    def assets(self) -> int:
        """Assets of this partition's fleet that trade (0 before :meth:`connect`)."""
        return sum(self._sizes.values())

    def close(self) -> None:
        self.stop_event.set()
        self.lease.release()
        self.link.close()
        self.dispatcher.close()
        self.inputs.close()
        self.broker.close()
