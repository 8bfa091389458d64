"""The same fleet in one process: no Celery, no shards in Redis.

This is the baseline the pipeline is measured against (``bench/bench_pipeline.py``): the same
collector, the same tree flattening and the same shard evaluation, over the whole fleet at once.
:func:`replay_rounds`, the reference the pipeline's commands are checked against in tests,
decodes every event whole instead (an independent path to the same answers).

The fees of a slot's orders are remembered in memory from the slot's market event
(``rounds.SlotFees``); a loop that starts mid-slot has none for that slot and prices its ticks
from their trees until the next market event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from gridfleet.config import FleetConfig
from gridfleet.exchange.link import (
    ExchangeLink,
    ExchangeTarget,
    OutgoingBatch,
    new_transaction_id,
    open_link,
)
from gridfleet.exchange.messages import (
    MarketEvent,
    MarketEventHead,
    ProtocolError,
    TickEvent,
    TickEventHead,
    decode_event,
    decode_event_for_ingress,
)
from gridfleet.platform.collector import PendingRound, RoundCollector
from gridfleet.platform.evaluate import merge_fragments
from gridfleet.platform.fleet import Fleet, connect_fleet, plan_fleet
from gridfleet.platform.rounds import (
    RoundError,
    RoundInput,
    SlotFees,
    build_round,
    build_round_from_heads,
    round_tag,
)
from gridfleet.platform.shard import Runtime
from gridfleet.strategies.context import State

log = logging.getLogger(__name__)


def full_events(pending: PendingRound) -> list[tuple[str, MarketEvent | TickEvent]]:
    """The round's events, decoded whole (the replay reference)."""
    return [(a, e) for a, e in pending.events.items() if isinstance(e, MarketEvent | TickEvent)]


def head_events(pending: PendingRound) -> list[tuple[str, MarketEventHead | TickEventHead]]:
    """The round's events with their trees raw (the loop flattens them as a shard does)."""
    return [
        (a, e) for a, e in pending.events.items() if isinstance(e, MarketEventHead | TickEventHead)
    ]


def evaluate_round(
    fleet: Fleet, runtime: Runtime, rnd: RoundInput, state: dict[str, State]
) -> dict[str, bytes]:
    """Every aggregator's ``batch_commands`` JSON for one round, evaluated in this process.

    ``state`` is updated in place with the strategies' new state.
    """
    from gridfleet.platform.evaluate import evaluate_shard

    out = evaluate_shard(
        rnd.ctx,
        rnd.assets,
        fleet.spec.strategy_indices(rnd.assets),
        runtime.strategies,
        state,
        rnd.markets,
        fleet.spec.market_strategy_indices(rnd.markets),
        runtime.market_strategies,
        runtime.profile,
    )
    state.update(out.state)
    return {agg: merge_fragments([out.fragments.get(agg, b"")]) for agg in rnd.aggregators}


@dataclass
class LoopStats:
    rounds: int = 0
    latencies_s: list[float] = field(default_factory=list)


class LocalLoop:
    """Connect a fleet and answer every round from this one process."""

    def __init__(
        self, config: FleetConfig, exchange_url: ExchangeTarget, *, link: ExchangeLink | None = None
    ) -> None:
        self.config = config
        self.plan = plan_fleet(config)
        self.link = link or open_link(exchange_url, config_id=config.exchange_config_id)
        self.events: queue.SimpleQueue[tuple[str, bytes, float, float]] = queue.SimpleQueue()
        self.stop_event = threading.Event()
        self.stats = LoopStats()
        self.state: dict[str, State] = {}
        self.slot_fees = SlotFees()
        self.fleet: Fleet | None = None

    def connect(self) -> Fleet:
        self.fleet = connect_fleet(self.link, self.plan)
        self.runtime = Runtime(self.fleet.spec)
        self.link.subscribe_events(
            self.fleet.aggregator_uuid.values(),
            lambda agg, raw, t: self.events.put((agg, raw, t, time.time())),
        )
        return self.fleet

    def run(self) -> None:
        fleet = self.fleet or self.connect()
        collector = RoundCollector(fleet.aggregator_uuid.values(), self.config.coalesce_window_s)
        while not self.stop_event.is_set():
            due = collector.next_due()
            try:
                items = [
                    self.events.get(
                        timeout=0.5 if due is None else max(0.0, due - time.monotonic())
                    )
                ]
            except queue.Empty:
                items = []
            while True:
                try:
                    items.append(self.events.get_nowait())
                except queue.Empty:
                    break
            for agg, raw, t_mono, t_wall in items:
                try:
                    collector.add(agg, decode_event_for_ingress(raw), t_mono, t_wall)
                except ProtocolError as exc:
                    log.error("aggregator %s: unusable event skipped: %s", agg, exc)
            for pending in collector.ready():
                try:
                    rnd = build_round_from_heads(
                        head_events(pending), fleet.own_markets, memory=self.slot_fees
                    )
                except RoundError as exc:
                    log.warning("round %s skipped: %s", pending.id, exc)
                    continue
                batches = evaluate_round(fleet, self.runtime, rnd, self.state)
                tag = round_tag(pending.key.market_slot, pending.key.tick_index)
                self.link.send_batches(
                    OutgoingBatch(agg, f"{tag}/{new_transaction_id()}", body)
                    for agg, body in batches.items()
                )
                self.stats.rounds += 1
                self.stats.latencies_s.append(time.time() - pending.first_wall)
            if collector.all_finished:
                break

    def close(self) -> None:
        self.stop_event.set()
        self.link.close()


def replay_rounds(
    fleet: Fleet, runtime: Runtime, events: dict[str, list[bytes]]
) -> dict[str, list[bytes]]:
    """Evaluate recorded events (aggregator -> raw events in arrival order) round by round.

    Returns aggregator -> the ``batch_commands`` JSON of each round in order: what a correct
    pipeline must have sent.
    """
    # The same grouping as ingress (market event and 0 % tick once, empty trees skipped), with
    # every event already in: all rounds are complete, none is late.
    collector = RoundCollector(events.keys(), open_market_only=False)  # events come per aggregator
    for agg, raws in events.items():
        for raw in raws:
            collector.add(agg, decode_event(raw), now=0.0, wall=0.0)
    state: dict[str, State] = {}
    slot_fees = SlotFees()
    out: dict[str, list[bytes]] = {}
    for pending in collector.ready(now=float("inf")):
        rnd = build_round(sorted(full_events(pending)), fleet.own_markets, memory=slot_fees)
        for agg, body in evaluate_round(fleet, runtime, rnd, state).items():
            out.setdefault(agg, []).append(body)
    return out
