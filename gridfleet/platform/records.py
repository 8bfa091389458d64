"""The run's event stream on the broker, and the trade, finish and gap records ingress puts on it.

Round records (the coordinator's) and rejection records (the batch answers') go on the same
stream; the report and the ledger writer read it. Every record is appended through an
:class:`EventStream`, which keeps what the broker did not take.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Collection
from typing import Any

import orjson
import redis

from gridfleet.exchange.messages import Trade, TradeEvent, TradeEventLite
from gridfleet.platform.observers import Observer

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000
"""Records kept on the event stream (approximately: Redis trims in whole nodes)."""

TRADE_ITEM_FIELDS = (
    "trade_id",
    "asset_id",
    "side",
    "energy_kwh",
    "price_ct",
    "fee_ct",
    "order_id",
    "market",
    "time",
)
"""An item of a trade record's ``items``, in this order."""

OUTCOME_FIELDS = (
    "aggregator",
    "event_ms",
    "batch_ms",
    "commands",
    "refused",
    "strategy_errors",
    "status",
    "on_time",
    "transaction_id",
)
"""An item of a round record's ``outcomes`` (one per aggregator), in this order."""


REWRITE_WINDOW_S = 5.0
"""After the broker restarted, a producer writes its records of this many seconds again: longer
than the broker's append-file fsync interval (``appendfsync everysec``), so what a crash took
is back; the ledger keeps each record once (records carry an id of their own, ``rid``)."""

MAX_UNWRITTEN = 500_000
"""Records kept while the broker is away (an hour of a 1 000-aggregator fleet's trade records);
beyond it the oldest are dropped, and counted as lost."""


class EventStream:
    """Appends records to a stream, one round trip per :meth:`flush`; nothing the broker did not
    take is dropped.

    Each record gets an id (``rid``, unique to this producer and process). A flush that fails
    (the broker away) keeps its records for the next one. Each flush also asks for the
    broker's run id: when it changed, the broker restarted and may have lost its last second
    of appends, so the records of the last :data:`REWRITE_WINDOW_S` are written again. Not
    thread-safe: one per producer thread.
    """

    def __init__(self, broker: redis.Redis, stream: str, observers: Observer, name: str) -> None:
        self.broker = broker
        self.stream = stream  # where added records go (a new run: a new stream)
        self.observers = observers
        self._prefix = f"{name}-{uuid.uuid4().hex[:12]}-"
        self._seq = itertools.count()
        self._unwritten: list[tuple[str, bytes]] = []  # (stream, encoded record)
        self._recent: deque[tuple[float, str, bytes]] = deque()  # (monotonic, stream, record)
        self._server: str | None = None  # the broker's run id at the last flush
        self._failing = False

    def add(self, record: dict[str, Any]) -> None:
        record["rid"] = f"{self._prefix}{next(self._seq)}"
        self._unwritten.append((self.stream, orjson.dumps(record)))

    def flush(self) -> bool:
        """Write what was added (and, after a broker restart, the recent records again);
        False if the broker is away (the records are kept)."""
        if not self._unwritten:
            return True
        batch = self._unwritten
        pipe = self.broker.pipeline(transaction=False)
        pipe.info("server")
        for stream, data in batch:
            pipe.xadd(stream, {"data": data}, maxlen=STREAM_MAXLEN, approximate=True)
        try:
            # a command's error does not fail the others: each append is judged on its own
            info, *added = pipe.execute(raise_on_error=False)
            server = info.get("run_id") if isinstance(info, dict) else None
            if server is not None and self._server is not None and server != self._server:
                self._rewrite_recent()
        except redis.RedisError as exc:  # the broker is away: nothing is known to be written
            self._keep(exc)
            return False
        self._server = server or self._server  # a broker that refuses INFO: no restart check
        errors = [r for r in added if isinstance(r, Exception)]
        self._unwritten = [b for b, r in zip(batch, added, strict=True) if isinstance(r, Exception)]
        now = time.monotonic()
        self._recent.extend(
            (now, stream, data)
            for (stream, data), r in zip(batch, added, strict=True)
            if not isinstance(r, Exception)
        )
        while self._recent and self._recent[0][0] < now - REWRITE_WINDOW_S:
            self._recent.popleft()
        if errors:  # e.g. the broker's memory is full: kept for the next flush
            self._keep(errors[0])
            return False
        if self._failing:
            log.warning("event stream: the kept records are written")
            self._failing = False
        return True

    def discard(self) -> None:
        """Drop what was added and not written (a standby: the active process writes)."""
        self._unwritten.clear()

    def _rewrite_recent(self) -> None:
        log.warning(
            "event stream: the broker restarted; its last %.0f s of records (%d) written again",
            REWRITE_WINDOW_S,
            len(self._recent),
        )
        pipe = self.broker.pipeline(transaction=False)
        for _, stream, data in self._recent:
            pipe.xadd(stream, {"data": data}, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.execute()

    def _keep(self, exc: Exception) -> None:
        over = len(self._unwritten) - MAX_UNWRITTEN
        if over > 0:
            del self._unwritten[:over]
            self.observers.records_lost(over)
            log.error("event stream: %d records dropped: the broker is away too long", over)
        if not self._failing:
            log.error(
                "event stream: broker unreachable (%s); %d records kept until it is back",
                exc,
                len(self._unwritten),
            )
            self._failing = True


def own_order_id(trade: Trade) -> str | None:
    """The id of the fleet's own order in a trade: the bid if its asset bought (the exchange
    shows the other side as ``anonymous``), else the offer."""
    oid = trade.bid_id if trade.seller == "anonymous" else trade.offer_id
    return oid if isinstance(oid, str) else None


def trade_record(
    aggregator: str,
    event: TradeEvent | TradeEventLite,
    slot: str | None,
    settlement_ids: Collection[str] = (),
) -> dict[str, Any]:
    """One aggregator's trade event: spot trades, energy, price and fees summed, the same for
    its settlement trades (those whose own order id is in ``settlement_ids``), and each trade
    as an item (:data:`TRADE_ITEM_FIELDS`)."""
    spot: list[Trade] = []
    settled: list[Trade] = []
    items: list[list[Any]] = []
    for t in event.trade_list:
        oid = own_order_id(t)
        settling = bool(settlement_ids) and oid in settlement_ids
        (settled if settling else spot).append(t)
        items.append(
            [
                t.trade_id,
                t.asset_id,
                "buy" if t.seller == "anonymous" else "sell",
                t.traded_energy,
                t.trade_price,
                _fee(t),
                oid,
                "settlement" if settling else "spot",
                t.time if isinstance(t.time, str) else None,
            ]
        )
    record: dict[str, Any] = {"kind": "trade", "slot": slot, "aggregator": aggregator}
    record.update(_sums(spot))
    if settled:
        record.update({f"settlement_{k}": v for k, v in _sums(settled).items()})
    record["items"] = items
    return record


def _fee(t: Trade) -> float:
    return float(t.total_fee) if isinstance(t.total_fee, int | float) else 0.0


def _sums(trades: list[Trade]) -> dict[str, Any]:
    return {
        "trades": len(trades),
        "energy_kwh": sum(t.traded_energy for t in trades),
        "price_ct": sum(t.trade_price for t in trades),
        "fees_ct": sum(_fee(t) for t in trades),
    }


class RecordWriter:
    """Collects trade and finish records and writes them in one round trip per :meth:`flush`."""

    def __init__(
        self,
        broker: redis.Redis,
        stream: str,
        observers: Observer,
        settlement_orders: str | None = None,
    ) -> None:
        self.broker = broker
        self.events = EventStream(broker, stream, observers, "ingress")
        self.observers = observers
        self.settlement_orders = settlement_orders  # the hash of settlement order ids, if any
        self._trades: list[tuple[str, TradeEvent | TradeEventLite, str | None]] = []

    def trade(self, aggregator: str, event: TradeEvent | TradeEventLite, slot: str | None) -> None:
        """Take a trade event; it is summed (spot apart from settlement) at :meth:`flush`."""
        self._trades.append((aggregator, event, slot))

    def finish(self, aggregator: str) -> None:
        self.events.add({"kind": "finish", "aggregator": aggregator})

    def add(self, record: dict[str, Any]) -> None:
        """Any other record (a gap's, see ``Gap.as_record``)."""
        self.events.add(record)

    def discard(self) -> None:
        """Drop what was taken (a standby ingress: the active one writes the records)."""
        self.events.discard()
        self._trades.clear()

    def _settlement_ids(self) -> set[str]:
        """Which of the taken trades' own order ids are settlement orders. One EXISTS when the
        fleet never placed one (the common case), one HMGET of the ids otherwise."""
        if not self._trades or self.settlement_orders is None:
            return set()
        try:
            if not self.broker.exists(self.settlement_orders):
                return set()
            ids = sorted(
                {
                    oid
                    for _, event, _ in self._trades
                    for t in event.trade_list
                    if (oid := own_order_id(t)) is not None
                }
            )
            if not ids:
                return set()
            found = self.broker.hmget(self.settlement_orders, ids)
        except redis.RedisError as exc:
            log.warning("settlement orders unreadable (%s): trades counted as spot", exc)
            return set()
        return {oid for oid, slot in zip(ids, found, strict=True) if slot is not None}

    def _sum_trades(self) -> None:
        settlement_ids = self._settlement_ids()
        for aggregator, event, slot in self._trades:
            record = trade_record(aggregator, event, slot, settlement_ids)
            self.events.add(record)
            self.observers.trades_recorded(record["trades"], record["energy_kwh"])
            if record.get("settlement_trades"):
                self.observers.settlement_trades_recorded(
                    record["settlement_trades"], record["settlement_energy_kwh"]
                )
        self._trades.clear()

    def flush(self) -> None:
        """Write the records taken since the last flush, in one round trip (see
        :class:`EventStream`: kept if the broker is away).

        Called after the loop has sent what was due: at a slot change a thousand aggregators'
        trade events arrive right before the next round's events, and one write each would
        hold that round up.
        """
        self._sum_trades()
        self.events.flush()
