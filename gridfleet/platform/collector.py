"""Coalescing the exchange's per-aggregator events into rounds.

The exchange publishes one event per aggregator for every slot and tick, within milliseconds of
each other. A :class:`RoundCollector` groups them by (market slot, tick index) and hands out a
round when every expected aggregator has reported, or when the coalescing window since the
round's first event has passed (pub/sub is at-most-once: a lost event is counted, not waited for).

It also absorbs the exchange's quirks:

- the ``market`` event and the 0 % tick arrive together: one round, evaluated once, marked as a
  market event;
- in the first slot, tick events carry an empty tree and null rates: skipped and counted;
- trade and finish events are passed through, never evaluated;
- an event for a round already handed out is either the 0 % tick twin of its market event
  (dropped), or a late event of an aggregator the round did not cover: that one gets a
  follow-up round of its own, because an aggregator left unanswered costs a whole tick;
- an event for a slot that is not the open market is counted and never evaluated: a slot
  before the newest one seen has closed (commands for it would land in the next market), and a
  slot more than :data:`MAX_SLOT_JUMP` ahead of it is no slot change the exchange makes (a
  stray or forged event for ``2099-01-01T00:00`` must not make every real round look stale).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gridfleet.exchange.messages import (
    AggregatorEvent,
    FinishEvent,
    IngressEvent,
    MarketEvent,
    MarketEventHead,
    TradeEvent,
    TradeEventLite,
)
from gridfleet.platform.rounds import RoundEvent, RoundKey, has_tree

log = logging.getLogger(__name__)

MAX_SLOT_JUMP = timedelta(days=1)
"""How far ahead of the newest slot seen an event's slot may be (the exchange moves one slot at a
time; a day covers any slot length and a run of lost market events)."""


@dataclass
class PendingRound:
    key: RoundKey
    first_at: float  # monotonic
    first_wall: float  # wall clock
    last_at: float = 0.0  # monotonic, latest event added
    widest_gap: float = 0.0  # longest quiet gap between two of its events (diagnostics)
    events: dict[str, RoundEvent] = field(default_factory=dict)  # aggregator -> event
    arrived: dict[str, float] = field(default_factory=dict)  # aggregator -> wall clock, first event
    market_event: bool = False
    seq: int = 0  # 0 for the round itself, 1.. for follow-ups of late aggregators

    @property
    def id(self) -> str:
        return self.key.id if self.seq == 0 else f"{self.key.id}.{self.seq}"


@dataclass
class CollectorStats:
    events: int = 0
    rounds: int = 0
    skipped_empty: int = 0
    late_events: int = 0
    twin_events: int = 0  # the 0 % tick after its market event (or the other way round)
    trades: int = 0
    finishes: int = 0
    incomplete_rounds: int = 0  # handed out on the window, some aggregators missing
    past_slot_events: int = 0  # for a slot that has closed: not evaluated
    foreign_slot_events: int = 0  # for a slot far ahead, or unparsable: not evaluated


@dataclass
class Collected:
    """What :meth:`RoundCollector.add` produced: trades/finishes to record now."""

    trades: list[tuple[str, TradeEvent | TradeEventLite]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    round: RoundKey | None = None  # the round a market or tick event was taken for, if any


class RoundCollector:
    def __init__(
        self,
        expected: Iterable[str],
        window_s: float = 0.05,
        max_wait_s: float = 0.3,
        keep_done: int = 64,
        *,
        open_market_only: bool = True,
    ) -> None:
        self.expected = frozenset(expected)
        # Off only for offline replays, which add each aggregator's whole recording in turn.
        self.open_market_only = open_market_only
        self.window_s = window_s  # a round is handed out after this long without a new event...
        self.max_wait_s = max_wait_s  # ...or this long after its first event, whichever is first
        self.pending: dict[RoundKey, PendingRound] = {}
        # recently handed out rounds: key -> (aggregators covered, follow-ups so far)
        self.done: OrderedDict[RoundKey, tuple[set[str], int]] = OrderedDict()
        self.keep_done = keep_done
        self.stats = CollectorStats()
        self.finished: set[str] = set()
        self.open_slot: str | None = None  # the newest market slot accepted so far
        self._open_at: datetime | None = None
        self._warned: set[tuple[str, str]] = set()  # (aggregator, slot) logged once

    def add(
        self,
        aggregator: str,
        event: AggregatorEvent | IngressEvent,
        now: float | None = None,
        wall: float | None = None,
    ) -> Collected:
        """Take one parsed event. Call :meth:`ready` afterwards to get complete rounds."""
        out = Collected()
        self.stats.events += 1
        if isinstance(event, TradeEvent | TradeEventLite):
            self.stats.trades += len(event.trade_list)
            out.trades.append((aggregator, event))
            return out
        if isinstance(event, FinishEvent):
            self.stats.finishes += 1
            self.finished.add(aggregator)
            out.finished.append(aggregator)
            return out
        if (
            not has_tree(event)
            or event.market_maker_rate is None
            or event.feed_in_tariff_rate is None
        ):
            self.stats.skipped_empty += 1
            return out
        if self.open_market_only and not self._in_open_market(aggregator, event.market_slot):
            return out
        key = RoundKey.of(event)
        out.round = key
        seq = 0
        if key in self.done:
            covered, follow_ups = self.done[key]
            if aggregator in covered:
                self.stats.twin_events += 1
                return out
            self.stats.late_events += 1
            seq = follow_ups + 1
        now = time.monotonic() if now is None else now
        wall = time.time() if wall is None else wall
        pending = self.pending.get(key)
        if pending is None:
            pending = self.pending[key] = PendingRound(key, now, wall, seq=seq)
        if pending.last_at:
            pending.widest_gap = max(pending.widest_gap, now - pending.last_at)
        pending.last_at = now
        is_market = isinstance(event, MarketEvent | MarketEventHead)
        if is_market:
            pending.market_event = True
        if aggregator in pending.events:
            self.stats.twin_events += 1
            if is_market:
                pending.events[aggregator] = event  # same tree; the market one says "new slot"
            return out
        pending.events[aggregator] = event
        pending.arrived[aggregator] = wall
        return out

    def plausible(self, slot: str) -> bool:
        """Could ``slot`` be the open market (or the next one)? No side effects: the ingress asks
        before it skips older events of a batch as superseded, so a forged far-future slot never
        supersedes the real ones."""
        if not self.open_market_only or slot == self.open_slot or self._open_at is None:
            return True
        try:
            at = datetime.fromisoformat(slot)
        except ValueError:
            return False
        return self._open_at < at <= self._open_at + MAX_SLOT_JUMP

    def _in_open_market(self, aggregator: str, slot: str) -> bool:
        """Is ``slot`` the open market (or the next one)? Counts and logs it once when not."""
        if slot == self.open_slot:
            return True
        try:
            at = datetime.fromisoformat(slot)
        except ValueError:
            return self._refuse(aggregator, slot, "foreign", "is not a market slot")
        if self._open_at is None or self._open_at < at <= self._open_at + MAX_SLOT_JUMP:
            self.open_slot, self._open_at = slot, at
            return True
        if at < self._open_at:
            return self._refuse(aggregator, slot, "past", f"closed (open: {self.open_slot})")
        return self._refuse(aggregator, slot, "foreign", f"is not the open market {self.open_slot}")

    def _refuse(self, aggregator: str, slot: str, kind: str, why: str) -> bool:
        if kind == "past":
            self.stats.past_slot_events += 1
        else:
            self.stats.foreign_slot_events += 1
        if (aggregator, slot) not in self._warned and len(self._warned) < 10_000:
            self._warned.add((aggregator, slot))
            log.warning(
                "aggregator %s: event for slot %r skipped: it %s",
                aggregator,
                slot,
                why,
                extra={"aggregator": aggregator, "slot": slot},
            )
        return False

    def next_due(self) -> float | None:
        """Monotonic time at which the oldest pending round is due on its window."""
        if not self.pending:
            return None
        return min(self._due(p) for p in self.pending.values())

    def _due(self, p: PendingRound) -> float:
        return min(max(p.first_at, p.last_at) + self.window_s, p.first_at + self.max_wait_s)

    def ready(self, now: float | None = None) -> list[PendingRound]:
        """Rounds that are complete, or whose window has passed, oldest first."""
        now = time.monotonic() if now is None else now
        out = []
        for key in sorted(self.pending):
            p = self.pending[key]
            covered = self.done[key][0] if key in self.done else set()
            complete = self.expected <= p.events.keys() | covered
            if complete or now >= self._due(p):
                if not complete and p.seq == 0:
                    self.stats.incomplete_rounds += 1
                out.append(p)
        for p in out:
            del self.pending[p.key]
            covered, _ = self.done.get(p.key, (set(), 0))
            self.done[p.key] = (covered | p.events.keys(), p.seq)
            self.done.move_to_end(p.key)
            self.stats.rounds += 1
        while len(self.done) > self.keep_done:
            self.done.popitem(last=False)
        return out

    @property
    def all_finished(self) -> bool:
        return bool(self.expected) and self.expected <= self.finished
