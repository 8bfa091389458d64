"""Trade, finish and gap records: what the exchange told the fleet, on the broker's event stream.

The report reads them (``Keys.events``) beside the coordinator's round records.
"""

from __future__ import annotations

import logging
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
        self.stream = stream
        self.observers = observers
        self.settlement_orders = settlement_orders  # the hash of settlement order ids, if any
        self._records: list[dict[str, Any]] = []
        self._trades: list[tuple[str, TradeEvent | TradeEventLite, str | None]] = []

    def trade(self, aggregator: str, event: TradeEvent | TradeEventLite, slot: str | None) -> None:
        """Take a trade event; it is summed (spot apart from settlement) at :meth:`flush`."""
        self._trades.append((aggregator, event, slot))

    def finish(self, aggregator: str) -> None:
        self._records.append({"kind": "finish", "aggregator": aggregator})

    def add(self, record: dict[str, Any]) -> None:
        """Any other record (a gap's, see ``Gap.as_record``)."""
        self._records.append(record)

    def discard(self) -> None:
        """Drop what was taken (a standby ingress: the active one writes the records)."""
        self._records.clear()
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
            self._records.append(record)
            self.observers.trades_recorded(record["trades"], record["energy_kwh"])
            if record.get("settlement_trades"):
                self.observers.settlement_trades_recorded(
                    record["settlement_trades"], record["settlement_energy_kwh"]
                )
        self._trades.clear()

    def flush(self) -> None:
        """Write the records taken since the last flush, in one round trip.

        Called after the loop has sent what was due: at a slot change a thousand aggregators'
        trade events arrive right before the next round's events, and one write each would
        hold that round up.
        """
        self._sum_trades()
        records, self._records = self._records, []
        if not records:
            return
        pipe = self.broker.pipeline(transaction=False)
        for record in records:
            pipe.xadd(
                self.stream, {"data": orjson.dumps(record)}, maxlen=STREAM_MAXLEN, approximate=True
            )
        try:
            pipe.execute()
        except redis.RedisError as exc:
            self.observers.records_lost(len(records))
            log.error("%d trade/finish records lost: broker unreachable (%s)", len(records), exc)
