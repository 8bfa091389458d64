"""The exchange's answers to the fleet's batches: rejections, market statistics and settlement
orders, recorded.

Each rejected command is counted, logged with its reason and stored where the asset's strategy
sees it on its next evaluation; ``dso_market_stats`` answers go to the market strategies' state;
the ids of accepted settlement orders go to ``Keys.settlement_orders``, so that the trades they
make are counted apart from spot trades (:mod:`gridfleet.platform.records`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import orjson
import redis

from gridfleet.exchange.messages import BatchResponse, CommandResponse, ProtocolError, decode
from gridfleet.platform.codec import packb
from gridfleet.platform.keys import Keys
from gridfleet.platform.observers import Observer
from gridfleet.platform.records import EventStream

log = logging.getLogger(__name__)


SETTLEMENT_MARKET = "Settlement Market"  # an answer's market_type for a settlement order
SETTLEMENT = SETTLEMENT_MARKET.encode()


def settlement_order(answer: CommandResponse) -> tuple[str, str] | None:
    """(order id, settled slot) of an accepted settlement bid or offer; None if the order JSON
    inside the answer is unusable (logged)."""
    text = answer.bid if isinstance(answer.bid, str) else answer.offer
    if not isinstance(text, str):
        return None
    try:
        order = orjson.loads(text)
        oid, slot = order["id"], order.get("time_slot", "")
    except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
        log.warning("settlement order answer without a usable order (%r): %.200s", exc, text)
        return None
    if not isinstance(oid, str):
        return None
    return oid, str(slot)[:16]


class ResponseRecorder:
    """Records batch responses; the name maps are the coordinator's (kept up to date by it)."""

    def __init__(
        self,
        broker: redis.Redis,
        keys: Keys,
        asset_names: dict[str, str],
        aggregator_names: dict[str, str],
        observers: Observer,
    ) -> None:
        self.broker = broker
        self.keys = keys
        self.asset_names = asset_names
        self.aggregator_names = aggregator_names
        self.observers = observers
        self.events = EventStream(broker, keys.events, observers, "answers")

    def record(self, raw: bytes) -> int:
        """Record one batch response; returns how many commands it rejected."""
        if b'"error"' not in raw and b"market_stats" not in raw and SETTLEMENT not in raw:
            # Nothing to record: every command was accepted. Most responses are like this, and
            # at 100 000 assets decoding them all would cost a core a tenth of every tick.
            return 0
        try:
            resp = decode(raw, BatchResponse)
        except ProtocolError as exc:
            log.error("unusable batch response skipped: %s", exc)
            return 0
        agg_name = self.aggregator_names.get(resp.aggregator_uuid, resp.aggregator_uuid)
        rejected = 0
        examples: list[str] = []
        items: list[list[str]] = []  # [asset, command, reason] per rejected command (ledger)
        pipe = self.broker.pipeline(transaction=False)
        for asset, answers in resp.responses.items():
            name = self.asset_names.get(asset)
            if name is None:
                log.warning(
                    "batch response of %s names an asset the fleet does not know: %s",
                    agg_name,
                    asset,
                    extra={"aggregator": agg_name},
                )
                continue
            for answer in answers:
                command = answer.command if isinstance(answer.command, str) else "?"
                if not answer.ok:
                    rejected += 1
                    reason = answer.reason or "no reason given"
                    items.append([asset, command, reason])
                    if len(examples) < 3:
                        examples.append(f"{command} of {name}: {reason}")
                    log.debug(
                        "exchange rejected %s of %s (%s): %s",
                        command,
                        name,
                        agg_name,
                        reason,
                        extra={"aggregator": agg_name},
                    )
                    pipe.hset(
                        self.keys.rejections,
                        asset,
                        packb(
                            {
                                "command": command,
                                "reason": reason,
                                "transaction_id": resp.transaction_id,
                            }
                        ),
                    )
                elif command == "dso_market_stats" and isinstance(answer.market_stats, dict):
                    pipe.hset(self.keys.market_answers, asset, packb(answer.market_stats))
                elif answer.market_type == SETTLEMENT_MARKET:
                    order = settlement_order(answer)
                    if order is not None:
                        pipe.hset(self.keys.settlement_orders, *order)
        if rejected:
            # One line per batch: a bad tick can reject tens of thousands of commands.
            log.warning(
                "exchange rejected %d commands of %s (batch %s), e.g. %s",
                rejected,
                agg_name,
                resp.transaction_id,
                "; ".join(examples),
                extra={"aggregator": agg_name},
            )
        if items:
            record = {
                "kind": "rejection",
                "aggregator": resp.aggregator_uuid,
                "transaction_id": resp.transaction_id,
                "items": items,
            }
            self.events.stream = self.keys.events  # the run's (the keys change with the run)
            self.events.add(record)
        pipe.execute()
        self.events.flush()
        if rejected:
            self.observers.commands_rejected(rejected)
        return rejected


class AnswerReader:
    """A link's answer handler: queues each answer and records it on a thread of its own, so
    the link's reader never waits on the broker. ``accept()`` false (a standby ingress): the
    answer is dropped, the active process records it."""

    def __init__(
        self,
        recorder: ResponseRecorder,
        stop: threading.Event,
        *,
        accept: Callable[[], bool] = lambda: True,
        name: str = "batch-answers",
    ) -> None:
        self.recorder = recorder
        self._accept = accept
        self._stop = stop
        self._queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)

    def start(self) -> AnswerReader:
        self._thread.start()
        return self

    def __call__(self, aggregator: str, raw: bytes, t: float) -> None:
        if self._accept():
            self._queue.put(raw)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.recorder.record(raw)
            except redis.RedisError as exc:
                log.error("could not record a batch answer: %s", exc)
