"""Ingress: exchange events in, one Celery task per shard out.

For every event round it parses each event once, coalesces the round's events across
aggregators, derives per-asset context once per tree, cuts the fleet into shards, writes the
shard inputs and a manifest to Redis, sends one task per shard (keys, not payloads) and tells the
coordinator the round is under way.

Several ingress processes can split a fleet: ``partition=(i, n)`` takes the aggregators whose
position in the fleet file is ``i`` modulo ``n``.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass

import kombu.exceptions
import numpy as np
import orjson
import redis

from gridfleet.config import FleetConfig
from gridfleet.platform import channels
from gridfleet.platform.collector import PendingRound, RoundCollector
from gridfleet.platform.dispatch import QUEUE, ShardDispatcher
from gridfleet.platform.exchange import ExchangeLink
from gridfleet.platform.fleet import Fleet, FleetPlan, connect_fleet
from gridfleet.platform.keys import Keys
from gridfleet.platform.metrics import Metrics
from gridfleet.platform.protocol import (
    ProtocolError,
    TradeEvent,
    TradeEventLite,
    decode_event_for_ingress,
)
from gridfleet.platform.rounds import RoundError, RoundInput, build_round
from gridfleet.platform.shard import Manifest, ShardInput, publish_spec, write_round

log = logging.getLogger(__name__)

DEFAULT_BUDGET_FRACTION = 0.85
"""Share of the tick interval a round may use before its batches must be out."""


@dataclass
class TickClock:
    """Learns the exchange's tick interval from the arrival of distinct rounds."""

    interval_s: float | None = None
    _last_key: tuple[str, str] | None = None
    _last_at: float = 0.0

    def observe(self, market_slot: str, completion: str, at: float) -> None:
        key = (market_slot, completion)
        if key == self._last_key:
            return
        if self._last_key is not None:
            gap = at - self._last_at
            if 0.02 < gap < 60:
                self.interval_s = (
                    gap if self.interval_s is None else 0.7 * self.interval_s + 0.3 * gap
                )
        self._last_key, self._last_at = key, at

    def budget(self, configured: float | None, fallback: float = 0.8) -> float:
        if configured is not None:
            return configured
        if self.interval_s is None:
            return fallback
        return self.interval_s * DEFAULT_BUDGET_FRACTION


def cut_shards(fleet: Fleet, rnd: RoundInput, shard_size: int) -> list[ShardInput]:
    """Cut a round's assets into shards of at most ``shard_size``; markets ride with shard 0."""
    batch = rnd.assets
    n = len(batch)
    if n:
        kinds = batch.kind.tolist()
        idx = np.fromiter(
            (
                fleet.strategy_index(u, a, k)
                for u, a, k in zip(batch.uuid, batch.aggregator, kinds, strict=True)
            ),
            dtype=np.int64,
            count=n,
        )
    else:
        idx = np.zeros(0, dtype=np.int64)
    shards: list[ShardInput] = []
    for start in range(0, max(n, 1), shard_size):
        rows = np.arange(start, min(n, start + shard_size))
        sub = batch if (start == 0 and len(rows) == n) else batch.take(rows)
        shards.append(ShardInput(sub, idx[rows]))
    if rnd.markets:
        shards[0].markets = list(rnd.markets)
        shards[0].market_strategy_index = [fleet.market_strategy[m.uuid] for m in rnd.markets]
    return shards


_ROUND_HEAD = re.compile(rb'"slot_completion":\s*"(\d+)%",\s*"market_slot":\s*"([^"]+)"')


def peek_round(raw: bytes) -> tuple[str, int] | None:
    """(market slot, tick index) from the head of a raw market/tick event, without parsing it.

    gsy-e (and the embedded exchange) put these two keys first; anything else returns None and
    is parsed in full.
    """
    m = _ROUND_HEAD.search(raw, 0, 160)
    if m is None:
        return None
    return m.group(2).decode(), int(m.group(1)) // 10


class Ingress:
    def __init__(
        self,
        config: FleetConfig,
        exchange_url: str,
        broker_url: str,
        *,
        partition: tuple[int, int] = (0, 1),
        metrics: Metrics | None = None,
        plan: FleetPlan | None = None,
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
        self.link = ExchangeLink(
            exchange_url, config_id=config.exchange_config_id, on_reconnect=self._reconnected
        )
        self.dispatcher = ShardDispatcher(broker_url)
        self.run_id = uuid.uuid4().hex[:8]
        self.clock = TickClock()
        self.fleet: Fleet | None = None
        self.spec_version = ""
        self._events: queue.SimpleQueue[tuple[str, bytes, float, float]] = queue.SimpleQueue()
        self.stop_event = threading.Event()
        # Counted here, not only in Redis: a broker restart must not erase the count of its losses.
        self.lost_rounds = 0
        self._last_slot: str | None = None  # trade events carry no slot; they follow its rounds
        self.lost_records = 0
        self.stale_events = 0
        self.stale_rounds = 0
        self.bad_events = 0
        self.broker_outages = 0
        self._broker_ok = True

    def _reconnected(self, who: str) -> None:
        self.metrics.reconnects.inc()
        self.broker.hincrby(self.keys.counters, "reconnects", 1)
        log.warning(
            "exchange reader %s reconnected: events published meanwhile are lost and counted as missing rounds",
            who,
        )

    # -- set-up -------------------------------------------------------------------------------

    def connect(self) -> Fleet:
        fleet = connect_fleet(self.link, self.plan)
        self.fleet = fleet
        self._publish_fleet()
        self.dispatcher.warm_up()
        self.link.subscribe_events(fleet.aggregator_uuid.values(), self._on_event)
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
        self.broker.hset(f"{self.keys.ns}:fleet", f"p{self.partition[0]}", orjson.dumps(registry))

    def _on_event(self, channel: str, raw: bytes, t: float) -> None:
        # Runs on a reader thread: only hand the bytes over (a slow reader gets dropped by Redis).
        self._events.put((channel, raw, t, time.time()))

    # -- the loop -----------------------------------------------------------------------------

    def run(self, max_rounds: int | None = None) -> None:
        fleet = self.fleet or self.connect()
        collector = RoundCollector(fleet.aggregator_uuid.values(), self.config.coalesce_window_s)
        log.info(
            "ingress %s running: %d aggregators, %d assets",
            self.run_id,
            len(fleet.aggregator_uuid),
            self.plan.asset_count,
        )
        dispatched = 0
        while not self.stop_event.is_set():
            self.metrics.beat()
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
            newest = max((k for k in keys if k), default=None)
            for (channel, raw, t_mono, t_wall), key in zip(batch, keys, strict=True):
                if newest is not None and key is not None and key < newest:
                    # A newer round is already here: the exchange has moved on, skip the parse.
                    self.stale_events += 1
                    continue
                self._take(collector, channel, raw, t_mono, t_wall)
            ready = collector.ready()
            if len(ready) > 1:
                # Behind: answer only the newest round; older ones would land after their tick.
                newest_key = max(p.key for p in ready)
                for p in ready:
                    if p.key < newest_key:
                        self.stale_rounds += 1
                        log.warning(
                            "round %s dropped: a newer round is already due",
                            p.id,
                            extra={"slot": p.key.market_slot, "tick": p.key.tick_index},
                        )
                ready = [p for p in ready if p.key == newest_key]
            for pending in ready:
                try:
                    if not self._broker_ok:
                        self._publish_fleet()
                        self._broker_ok = True
                        log.warning(
                            "broker is back: fleet spec published again; %d rounds were lost meanwhile",
                            self.lost_rounds,
                        )
                    self._dispatch(pending)
                except (redis.RedisError, kombu.exceptions.OperationalError) as exc:
                    self.lost_rounds += 1
                    if self._broker_ok:
                        self.broker_outages += 1
                    self._broker_ok = False
                    log.error(
                        "round %s lost: broker unreachable (%s)",
                        pending.id,
                        exc,
                        extra={"slot": pending.key.market_slot, "tick": pending.key.tick_index},
                    )
                dispatched += 1
            if collector.all_finished:
                log.info("every aggregator got the finish event; ingress stops")
                self.broker.hset(self.keys.counters, "finished", 1)
                break
            if max_rounds is not None and dispatched >= max_rounds:
                break
        try:
            self._write_counters(collector)
        except redis.RedisError as exc:
            log.error("final counters not written (%s): %s", exc, collector.stats)

    def _take(
        self, collector: RoundCollector, channel: str, raw: bytes, t_mono: float, t_wall: float
    ) -> None:
        aggregator = channels.aggregator_of(channel)
        if aggregator is None:
            return
        try:
            event = decode_event_for_ingress(raw)
        except ProtocolError as exc:
            self.metrics.bad_events.inc()
            self.bad_events += 1
            log.error(
                "aggregator %s: unusable event skipped: %s",
                aggregator,
                exc,
                extra={"aggregator": aggregator},
            )
            return
        kind = type(event).__name__.removesuffix("Event").lower()
        self.metrics.events.labels(kind).inc()
        slot = getattr(event, "market_slot", None)
        completion = getattr(event, "slot_completion", None)
        if isinstance(slot, str) and isinstance(completion, str):
            self.clock.observe(slot, completion, t_mono)
        out = collector.add(aggregator, event, t_mono, t_wall)
        try:
            for agg, trade_event in out.trades:
                self._record_trades(agg, trade_event)
            for agg in out.finished:
                record = {"kind": "finish", "aggregator": agg}
                self.broker.xadd(
                    self.keys.events,
                    {"data": orjson.dumps(record)},
                    maxlen=100_000,
                    approximate=True,
                )
        except redis.RedisError as exc:
            self.lost_records += 1
            log.error(
                "trade/finish record of %s lost: broker unreachable (%s)",
                aggregator,
                exc,
                extra={"aggregator": aggregator},
            )

    def _record_trades(self, aggregator: str, event: TradeEvent | TradeEventLite) -> None:
        energy = sum(t.traded_energy for t in event.trade_list)
        price = sum(t.trade_price for t in event.trade_list)
        fees = sum(
            float(t.total_fee) if isinstance(t.total_fee, int | float) else 0.0
            for t in event.trade_list
        )
        record = {
            "kind": "trade",
            "slot": self._last_slot,
            "aggregator": aggregator,
            "trades": len(event.trade_list),
            "energy_kwh": energy,
            "price_ct": price,
            "fees_ct": fees,
        }
        pipe = self.broker.pipeline(transaction=False)
        pipe.xadd(
            self.keys.events, {"data": orjson.dumps(record)}, maxlen=100_000, approximate=True
        )
        pipe.hincrby(self.keys.counters, "trades", len(event.trade_list))
        pipe.hincrbyfloat(self.keys.counters, "energy_traded_kwh", energy)
        pipe.execute()

    def _dispatch(self, pending: PendingRound) -> None:
        assert self.fleet is not None
        fleet = self.fleet
        t0 = time.perf_counter()
        events = list(pending.events.items())
        try:
            rnd = build_round(events, fleet.own_markets)
        except RoundError as exc:
            self.metrics.skipped_rounds.labels("unusable").inc()
            log.warning("round %s skipped: %s", pending.key.id, exc)
            return
        self._last_slot = rnd.key.market_slot
        shards = cut_shards(fleet, rnd, self.config.shard_size)
        budget = self.clock.budget(self.config.tick_budget_s)
        round_id = f"{self.run_id}:{pending.id}"
        missing = (
            []
            if pending.seq
            else sorted(set(fleet.aggregator_uuid.values()) - set(rnd.aggregators))
        )
        manifest = Manifest(
            round_id=round_id,
            ctx=rnd.ctx,
            spec_version=self.spec_version,
            shards=len(shards),
            aggregators=sorted(rnd.aggregators),
            received_at=pending.first_wall,
            deadline=pending.first_wall + budget,
            skipped_aggregators=missing,
        )
        write_round(self.broker, self.keys, manifest, shards)
        self.dispatcher.send(self.keys.ns, round_id, len(shards), manifest.deadline)
        depth = self.broker.rpush(self.keys.rounds, round_id)
        self.metrics.queue_depth.set(self.broker.llen(QUEUE))
        if depth > 3:
            log.warning("the coordinator is %d rounds behind", depth - 1)
        self.metrics.rounds.inc()
        self.metrics.shards.inc(len(shards))
        if missing:
            log.warning(
                "round %s: no event from %d aggregators (lost or late)",
                rnd.key.id,
                len(missing),
                extra={"slot": rnd.key.market_slot, "tick": rnd.key.tick_index},
            )
        log.debug(
            "round %s: %d assets in %d shards dispatched in %.1f ms (budget %.0f ms)",
            rnd.key.id,
            len(rnd.assets),
            len(shards),
            (time.perf_counter() - t0) * 1e3,
            budget * 1e3,
            extra={"slot": rnd.key.market_slot, "tick": rnd.key.tick_index},
        )

    def _write_counters(self, collector: RoundCollector) -> None:
        s = collector.stats
        self.broker.hset(
            self.keys.counters,
            mapping={
                "ingress_events": s.events,
                "ingress_rounds": s.rounds,
                "skipped_empty": s.skipped_empty,
                "late_events": s.late_events,
                "incomplete_rounds": s.incomplete_rounds,
                "twin_events": s.twin_events,
                "bad_events": self.bad_events,
                "lost_rounds": self.lost_rounds,
                "lost_records": self.lost_records,
                "broker_outages": self.broker_outages,
                "stale_events": self.stale_events,
                "stale_rounds": self.stale_rounds,
            },
        )

    def close(self) -> None:
        self.stop_event.set()
        self.link.close()
        self.dispatcher.close()
        self.broker.close()
