"""Trade, finish and gap records: what the exchange told the fleet, on the broker's event stream.

The report reads them (``Keys.events``) beside the coordinator's round records.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis

from gridfleet.exchange.messages import TradeEvent, TradeEventLite
from gridfleet.platform.observers import Observer

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000
"""Records kept on the event stream (approximately: Redis trims in whole nodes)."""


def trade_record(
    aggregator: str, event: TradeEvent | TradeEventLite, slot: str | None
) -> dict[str, Any]:
    """One aggregator's trade event, summed: trades, energy, price and fees."""
    return {
        "kind": "trade",
        "slot": slot,
        "aggregator": aggregator,
        "trades": len(event.trade_list),
        "energy_kwh": sum(t.traded_energy for t in event.trade_list),
        "price_ct": sum(t.trade_price for t in event.trade_list),
        "fees_ct": sum(
            float(t.total_fee) if isinstance(t.total_fee, int | float) else 0.0
            for t in event.trade_list
        ),
    }


class RecordWriter:
    """Collects trade and finish records and writes them in one round trip per :meth:`flush`."""

    def __init__(self, broker: redis.Redis, stream: str, observers: Observer) -> None:
        self.broker = broker
        self.stream = stream
        self.observers = observers
        self._records: list[dict[str, Any]] = []

    def trade(self, aggregator: str, event: TradeEvent | TradeEventLite, slot: str | None) -> None:
        record = trade_record(aggregator, event, slot)
        self._records.append(record)
        self.observers.trades_recorded(record["trades"], record["energy_kwh"])

    def finish(self, aggregator: str) -> None:
        self._records.append({"kind": "finish", "aggregator": aggregator})

    def add(self, record: dict[str, Any]) -> None:
        """Any other record (a gap's, see ``Gap.as_record``)."""
        self._records.append(record)

    def discard(self) -> None:
        """Drop what was taken (a standby ingress: the active one writes the records)."""
        self._records.clear()

    def flush(self) -> None:
        """Write the records taken since the last flush, in one round trip.

        Called after the loop has sent what was due: at a slot change a thousand aggregators'
        trade events arrive right before the next round's events, and one write each would
        hold that round up.
        """
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
