"""Exchange-side deadline accounting: did each aggregator answer each event in time?

A *round* is one dispatch of events to an aggregator that expects an answer: a tick event (the
``market`` event and the 0 % tick travel together and count as one round). The deadline of a
round is the moment the next round is sent to that aggregator (or the finish event).

Attribution of a batch that arrives at time ``t``:

- when its ``transaction_id`` starts with ``<market slot>/<completion>%/`` (gridfleet's clients
  tag their batches so) and names a round already sent to this aggregator, it belongs to that
  round: a lost round then costs one round, not every later one;
- otherwise (the SDK sends plain uuids) it belongs to the oldest of the aggregator's last two
  rounds that has no batch yet and is not idle (an idle round expects none);
- if both have one, it is an extra batch of the latest round (updates its last arrival).

So a batch that answers round ``k`` after round ``k+1`` went out is counted *late* for ``k``.
A round is *on time* when its first batch arrived before its deadline, *late* when it arrived
after, *missing* when none came before the round after next was sent (or the run finished).

A round is *idle* when no batch came and the aggregator had nothing it could trade when the
round was sent (every asset at or below the 2e-5 kWh floor, no market selected): gsy-e never
answers an empty batch, so a client rightly sends none. Idle rounds are among the
``aggregator_rounds`` (every round sent) but not in the on-time ratio, which is over the rounds
that expected a batch. A round the exchange could not deliver (its
Redis was down) is *missing* for every aggregator, idle or not: they never saw it.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

ON_TIME, LATE, MISSING, IDLE, OPEN = "on_time", "late", "missing", "idle", "open"
STATUSES = (ON_TIME, LATE, MISSING, IDLE, OPEN)


@dataclass(slots=True)
class RoundRecord:
    round: int  # global round number (same for all aggregators of one dispatch)
    sent: float
    deadline: float = math.inf
    first: float | None = None
    last: float | None = None
    batches: int = 0
    idle: bool = False  # nothing to trade when sent: no batch is expected
    undelivered: bool = False  # the exchange could not send it

    @property
    def status(self) -> str:
        if self.first is None:
            if self.deadline == math.inf:
                return OPEN
            return IDLE if self.idle and not self.undelivered else MISSING
        return ON_TIME if self.first < self.deadline else LATE


@dataclass
class Gap:
    """A time the exchange could not deliver (its Redis was down), and the rounds it cost."""

    start: float
    end: float | None = None  # None: still down (at the finish: never came back)
    rounds: int = 0  # tick rounds dispatched meanwhile, none delivered
    first_round: str = ""  # "<market slot> <n>%" of the first and last of them
    last_round: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": round(self.start, 6),
            "end": None if self.end is None else round(self.end, 6),
            "seconds": None if self.end is None else round(self.end - self.start, 3),
            "rounds": self.rounds,
            "first_round": self.first_round,
            "last_round": self.last_round,
        }


@dataclass
class RoundInfo:
    market_slot: str
    completion: int
    sent: float
    aggregators: int = 0
    delivered: bool = True


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max (nearest-rank), None when there is no value."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    v = sorted(values)

    def rank(p: float) -> float:
        return v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": v[-1]}


@dataclass
class DeadlineTracker:
    """Records rounds and batch arrivals; all times are ``time.time()`` seconds."""

    rounds: list[RoundInfo] = field(default_factory=list)
    # per aggregator: its records, oldest first (only the last two are still open to batches)
    per_agg: dict[str, list[RoundRecord]] = field(default_factory=dict)
    unattributed: int = 0
    gaps: list[Gap] = field(default_factory=list)

    def round_sent(
        self,
        market_slot: str,
        completion: int,
        sent: float,
        aggregators: list[str],
        idle: Container[str] = (),
    ) -> int:
        """A new round went out to ``aggregators`` at ``sent``; returns its number. ``idle``:
        those of them with nothing to trade in it (no batch expected)."""
        number = len(self.rounds)
        self.rounds.append(RoundInfo(market_slot, completion, sent, len(aggregators)))
        for agg in aggregators:
            recs = self.per_agg.setdefault(agg, [])
            if recs and recs[-1].deadline == math.inf:
                recs[-1].deadline = sent
            recs.append(RoundRecord(number, sent, idle=agg in idle))
        return number

    # ------------------------------------------------------------------ delivery gaps

    def delivery_failed(self, at: float) -> bool:
        """The exchange could not send at ``at``; True when this opens a new gap."""
        if self.gaps and self.gaps[-1].end is None:
            return False
        self.gaps.append(Gap(start=at))
        return True

    def round_undelivered(self, label: str, number: int | None = None) -> None:
        """A tick round (``<market slot> <n>%``) was dispatched but not delivered; ``number``:
        its deadline round, which is then missing for every aggregator (they never saw it)."""
        if not self.gaps or self.gaps[-1].end is not None:
            self.gaps.append(Gap(start=math.nan))  # not expected: a failure opens the gap
        gap = self.gaps[-1]
        gap.rounds += 1
        gap.first_round = gap.first_round or label
        gap.last_round = label
        if number is None:
            return
        self.rounds[number].delivered = False
        for recs in self.per_agg.values():
            for rec in reversed(recs[-3:]):
                if rec.round == number:
                    rec.undelivered = True
                    break

    def delivery_restored(self, at: float) -> Gap | None:
        """A send went through at ``at``: the open gap (returned) ends."""
        if not self.gaps or self.gaps[-1].end is not None:
            return None
        self.gaps[-1].end = at
        return self.gaps[-1]

    def batch_arrived(
        self, agg: str, at: float, transaction_id: object = None
    ) -> RoundRecord | None:
        recs = self.per_agg.get(agg)
        if not recs:
            self.unattributed += 1
            return None
        target = self._tagged(recs, transaction_id, at)
        if target is None:
            # An idle round expects no batch (nothing to trade; gsy-e does not answer an empty
            # one): an untagged batch belongs to the oldest round that does.
            candidates = [r for r in recs[-2:] if not r.idle]
            target = next((r for r in candidates if r.first is None and r.sent <= at), None)
        if target is None:
            target = recs[-1]
            if target.sent > at:
                self.unattributed += 1
                return None
        if target.first is None:
            target.first = at
        target.last = at
        target.batches += 1
        return target

    def _tagged(
        self, recs: list[RoundRecord], transaction_id: object, at: float
    ) -> RoundRecord | None:
        """The round a batch names in its transaction id (``<slot>/<n>%/...``), if it is one of
        this aggregator's rounds already sent. A client can only name a round it was sent, so a
        tag can make a batch count as late, never earlier than it arrived."""
        if not isinstance(transaction_id, str) or transaction_id.count("/") < 2:
            return None
        slot, completion, _ = transaction_id.split("/", 2)
        if not completion.endswith("%"):
            return None
        try:
            pct = int(completion[:-1])
        except ValueError:
            return None
        for rec in reversed(recs[-64:]):
            info = self.rounds[rec.round]
            if info.market_slot == slot and info.completion == pct and rec.sent <= at:
                return rec
        return None

    def finish(self, at: float) -> None:
        """The run ended: the open rounds' deadline is the finish event."""
        for recs in self.per_agg.values():
            if recs and recs[-1].deadline == math.inf:
                recs[-1].deadline = at

    # ------------------------------------------------------------------ report

    def report(
        self, meta: dict[str, Any] | None = None, names: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The JSON report: summary, one row per round, one summary per aggregator (by uuid,
        with its name when ``names`` maps uuids to names)."""
        per_round: dict[int, dict[str, Any]] = {}
        firsts: list[float] = []
        lasts: list[float] = []
        totals = dict.fromkeys(STATUSES, 0)
        aggs: dict[str, dict[str, Any]] = {}
        for agg, recs in self.per_agg.items():
            a = aggs.setdefault(
                agg, {"name": (names or {}).get(agg, ""), **dict.fromkeys(STATUSES, 0)}
            )
            for r in recs:
                st = r.status
                totals[st] += 1
                a[st] += 1
                row = per_round.setdefault(r.round, _empty_row())
                row[st] += 1
                if r.first is not None and r.last is not None:
                    f_ms, l_ms = (r.first - r.sent) * 1000, (r.last - r.sent) * 1000
                    firsts.append(f_ms)
                    lasts.append(l_ms)
                    row["_first"].append(f_ms)
                    row["_last"].append(l_ms)
        rows = []
        for number, info in enumerate(self.rounds):
            row = per_round.get(number) or _empty_row()
            interval = (
                (self.rounds[number + 1].sent - info.sent) * 1000
                if number + 1 < len(self.rounds)
                else None
            )
            rows.append(
                {
                    "round": number,
                    "market_slot": info.market_slot,
                    "slot_completion": f"{info.completion}%",
                    "sent_at": round(info.sent, 6),
                    "interval_ms": None if interval is None else round(interval, 3),
                    "aggregators": info.aggregators,
                    ON_TIME: row[ON_TIME],
                    LATE: row[LATE],
                    MISSING: row[MISSING],
                    IDLE: row[IDLE],
                    "delivered": info.delivered,
                    "first_batch_ms": _rounded(percentiles(row["_first"])),
                    "last_batch_ms": _rounded(percentiles(row["_last"])),
                }
            )
        counted = totals[ON_TIME] + totals[LATE] + totals[MISSING]  # a batch was expected
        summary = {
            "rounds": len(self.rounds),
            "aggregator_rounds": counted + totals[IDLE],
            ON_TIME: totals[ON_TIME],
            LATE: totals[LATE],
            MISSING: totals[MISSING],
            IDLE: totals[IDLE],
            "undelivered_rounds": sum(g.rounds for g in self.gaps),
            "gaps": [g.as_dict() for g in self.gaps],
            "on_time_ratio": round(totals[ON_TIME] / counted, 6) if counted else None,
            "first_batch_ms": _rounded(percentiles(firsts)),
            "last_batch_ms": _rounded(percentiles(lasts)),
            "unattributed_batches": self.unattributed,
        }
        return {"meta": meta or {}, "summary": summary, "ticks": rows, "aggregators": aggs}


def _empty_row() -> dict[str, Any]:
    return {**dict.fromkeys(STATUSES, 0), "_first": [], "_last": []}


def _rounded(p: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 3) for k, v in p.items()}
