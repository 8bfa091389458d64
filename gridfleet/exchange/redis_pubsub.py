"""The aggregator side of the gsy-e protocol over Redis pub/sub: an :class:`ExchangeLink` transport.

:class:`RedisPubSubLink` creates aggregators, registers and selects thousands of assets and markets
(pipelined: one round trip per bulk step, not one blocking call each), subscribes to event and
batch-response channels, publishes batches and correlates answers by transaction id.

Two rules shape it:

- **Never block a pub/sub reader.** Redis drops a subscriber whose output buffer passes its limit
  (32 MB at gsy-e's defaults). Readers only take messages off the socket and hand the raw bytes
  to a callback that must be cheap (put them on a queue); parsing happens elsewhere. Event
  channels are spread over several connections so no single buffer holds a whole round; one
  thread polls them all (:mod:`gridfleet.exchange.pubsub_reader`: a thread per connection spent
  more time passing the GIL around than reading).
- **Survive a reconnect.** A connection that is lost is opened again with backoff and
  subscribes again to everything it had; ``on_reconnect`` lets the owner count what may be lost
  (pub/sub is at-most-once: messages published meanwhile are gone).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson
import redis

from gridfleet.exchange import channels
from gridfleet.exchange.link import (
    AggregatorRequest,
    BroughtUp,
    ExchangeError,
    ExchangeUnreachable,
    OutgoingBatch,
    RawHandler,
    ReconnectHandler,
    SelectionReport,
    aggregator_identity,
    new_transaction_id,
)
from gridfleet.exchange.messages import (
    AggregatorResponse,
    ProtocolError,
    RegisterResponse,
    decode,
)
from gridfleet.exchange.pubsub_reader import MessageHandler, ReaderLoop, Subscriber

log = logging.getLogger(__name__)

ALREADY_SELECTED = "Device already have selected "
"""gsy-e's answer to a SELECT of a device an aggregator holds, followed by that aggregator's uuid."""

NO_REGISTRATION_ANSWER = (
    "no answer to its registration: gsy-e answers only for assets with an external strategy"
    " (e.g. LoadHoursExternalStrategy) and markets with external_connection_available=True;"
    " check that the name is spelled as in the setup"
)


# ---------------------------------------------------------------------------------------------
# Correlating answers with requests


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    answer: object | None = None


class PendingRequests:
    """Requests waiting for an answer, by transaction id, with a hard cap on memory.

    When more than ``capacity`` requests are outstanding the oldest are forgotten (and counted),
    so a flood of unanswered requests cannot grow memory without bound.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def add(self, transaction_id: str) -> _Pending:
        pending = _Pending()
        with self._lock:
            self._items[transaction_id] = pending
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.evicted += 1
        return pending

    def resolve(self, transaction_id: str, answer: object) -> bool:
        with self._lock:
            pending = self._items.pop(transaction_id, None)
        if pending is None:
            return False
        pending.answer = answer
        pending.event.set()
        return True

    def discard(self, transaction_id: str) -> None:
        with self._lock:
            self._items.pop(transaction_id, None)

    def __len__(self) -> int:
        return len(self._items)


# ---------------------------------------------------------------------------------------------
# A pub/sub reader that reconnects by itself


READ_SIZE = 1 << 20

AGGREGATORS_PER_READER = 16
MAX_READERS = 64
"""Event channels are spread so that one reader connection carries at most about 16
aggregators (and there are at most 64 readers): Redis drops a subscriber whose output buffer
passes its limit (``client-output-buffer-limit pubsub``, 32 MB at Redis's defaults), and with it
every aggregator on that connection, so a single oversized message must cost few of them."""

MAX_MESSAGE_BYTES = 64 << 20
"""An event bigger than this is counted, logged with its channel and dropped unparsed."""


def readers_for(channels_count: int) -> int:
    """How many reader connections carry ``channels_count`` event channels."""
    return max(1, min(MAX_READERS, max(4, -(-channels_count // AGGREGATORS_PER_READER))))


# ---------------------------------------------------------------------------------------------
# The link


class RedisPubSubLink:
    """Aggregator-side connection to a gsy-e exchange (or gridfleet's simulator) over Redis.

    ``url`` may carry a password and use ``rediss://`` for TLS. ``config_id`` is the exchange's
    configuration id (empty for a local gsy-e run).
    """

    def __init__(
        self,
        url: str,
        *,
        config_id: str = "",
        event_connections: int | None = None,
        request_timeout: float = 30.0,
        on_reconnect: ReconnectHandler | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.url = url
        self.config_id = config_id
        self.request_timeout = request_timeout
        # Events of a 100 000-asset round are ~32 MB: read them in 1 MiB gulps, not redis-py's
        # default 64 KiB (each read is a GIL hand-over for a reader thread).
        self.redis = redis.Redis.from_url(
            url, socket_keepalive=True, health_check_interval=10, socket_read_size=READ_SIZE
        )
        self._pending = PendingRequests()
        self._on_reconnect = on_reconnect
        self._control = Subscriber(
            self.redis, self._on_control, name="exchange-control", on_reconnect=on_reconnect
        )
        self._control.subscribe(channels.AGGREGATOR_RESPONSE)
        self._control.psubscribe(channels.register_participant_response("*"))
        self._loops = [ReaderLoop([self._control], name="exchange-control")]
        self._loops[0].start()
        self._event_readers: list[Subscriber] = []
        self._response_readers: list[Subscriber] = []
        self._n_event_connections = event_connections  # None: readers_for(channels)
        self.max_message_bytes = max_message_bytes
        self.oversized = 0  # events dropped unparsed for their size
        self._control.wait_ready()

    # -- control-channel answers ---------------------------------------------------------------

    def _on_control(self, channel: str, raw: bytes, _t: float) -> None:
        try:
            if channel == channels.AGGREGATOR_RESPONSE:
                answer: AggregatorResponse | RegisterResponse = decode(raw, AggregatorResponse)
            else:
                answer = decode(raw, RegisterResponse)
        except ProtocolError as exc:
            log.warning("ignoring malformed answer on %s: %s", channel, exc)
            return
        self._pending.resolve(answer.transaction_id, answer)

    def _request_many(
        self, requests: list[tuple[str, str, bytes]], timeout: float | None
    ) -> tuple[dict[str, object], list[str]]:
        """Publish ``(transaction_id, channel, payload)`` in one pipeline and wait for the answers.

        Returns the answers by transaction id and the transaction ids that got none in time.
        """
        waits = {tid: self._pending.add(tid) for tid, _, _ in requests}
        pipe = self.redis.pipeline(transaction=False)
        for _, channel, payload in requests:
            pipe.publish(channel, payload)
        pipe.execute()
        deadline = time.monotonic() + (timeout or self.request_timeout)
        answers: dict[str, object] = {}
        missing: list[str] = []
        for tid, pending in waits.items():
            if pending.event.wait(max(0.0, deadline - time.monotonic())):
                answers[tid] = pending.answer
            else:
                self._pending.discard(tid)
                missing.append(tid)
        return answers, missing

    # -- aggregators, registration, selection --------------------------------------------------

    def create_aggregators(
        self,
        names: Iterable[str],
        timeout: float | None = None,
        *,
        uuids: Mapping[str, str] | None = None,
        reused: list[str] | None = None,
    ) -> dict[str, str]:
        """Create aggregators; returns name -> aggregator uuid (the CREATE's transaction id).

        ``uuids`` (name -> uuid) fixes each aggregator's uuid instead of drawing a new one. gsy-e
        answers a CREATE whose uuid exists with an error naming that uuid: such an aggregator is
        the same fleet's from an earlier run or a crashed process, and is reused (its name is
        appended to ``reused``), selections and all.
        """
        reqs = []
        by_tid: dict[str, str] = {}
        for name in names:
            tid = (uuids or {}).get(name) or new_transaction_id()
            by_tid[tid] = name
            body = {"name": name, "type": "CREATE", "transaction_id": tid}
            reqs.append((tid, channels.AGGREGATOR_COMMANDS, orjson.dumps(body)))
        answers, missing = self._request_many(reqs, timeout)
        if missing:
            raise ExchangeUnreachable(
                f"the exchange did not answer the creation of {_names(by_tid[t] for t in missing)}"
                " in time: is it running, with external connections on"
                " (gsy-e run ... --enable-external-connection), on this Redis?"
            )
        out: dict[str, str] = {}
        for tid, answer in answers.items():
            assert isinstance(answer, AggregatorResponse)
            name = by_tid[tid]
            if answer.status == "error" and uuids and answer.aggregator_uuid == tid:
                if reused is not None:
                    reused.append(name)
            elif answer.status != "ready":
                raise ExchangeError(
                    f"creating aggregator {name!r} failed: {answer.status} {answer.msg or ''}".strip()
                )
            out[name] = tid
        return out

    def register_many(
        self, names: Iterable[str], timeout: float | None = None
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Register assets (by name) or markets (by slug).

        Returns (name -> device uuid, name -> why it is not registered). Registration is the only
        way to learn a uuid, so it comes before selection.
        """
        reqs = []
        by_tid: dict[str, str] = {}
        for name in names:
            tid = new_transaction_id()
            by_tid[tid] = name
            body = {"name": name, "transaction_id": tid}
            reqs.append((tid, channels.register_participant(name), orjson.dumps(body)))
        answers, missing = self._request_many(reqs, timeout)
        out: dict[str, str] = {}
        failed = {by_tid[tid]: NO_REGISTRATION_ANSWER for tid in missing}
        for tid, answer in answers.items():
            assert isinstance(answer, RegisterResponse)
            if answer.status != "ready" or not isinstance(answer.device_uuid, str):
                failed[by_tid[tid]] = f"registration refused ({answer.status})"
            else:
                out[by_tid[tid]] = answer.device_uuid
        return out, failed

    def register(self, names: Iterable[str], timeout: float | None = None) -> dict[str, str]:
        """:meth:`register_many`, raising :class:`ExchangeError` naming what did not register."""
        out, failed = self.register_many(names, timeout)
        if failed:
            raise ExchangeError(f"not registered: {_names(failed)}: {next(iter(failed.values()))}")
        return out

    def _aggregator_command(
        self, kind: str, aggregator_uuid: str, device_uuids: Iterable[str], timeout: float | None
    ) -> SelectionReport:
        reqs = []
        by_tid: dict[str, str] = {}
        for device in device_uuids:
            tid = new_transaction_id()
            by_tid[tid] = device
            body = {
                "aggregator_uuid": aggregator_uuid,
                "device_uuid": device,
                "type": kind,
                "transaction_id": tid,
            }
            reqs.append((tid, channels.AGGREGATOR_COMMANDS, orjson.dumps(body)))
        report = SelectionReport()
        answers, missing = self._request_many(reqs, timeout)
        for tid in missing:
            report.errors[by_tid[tid]] = f"no answer to {kind} in time"
        mine = f"{ALREADY_SELECTED}{aggregator_uuid}"
        for tid, answer in answers.items():
            assert isinstance(answer, AggregatorResponse)
            msg = answer.msg if isinstance(answer.msg, str) else ""
            if answer.status != "error" or (kind == "SELECT" and msg == mine):
                # gsy-e answers a SELECT of a device this aggregator already holds with an error
                # naming this very aggregator: after a restart that is success.
                report.selected.append(by_tid[tid])
            elif kind == "SELECT" and msg.startswith(ALREADY_SELECTED):
                report.errors[by_tid[tid]] = (
                    f"{msg} (held by another aggregator: unselect it there, or leave it out of"
                    " this fleet)"
                )
            else:
                report.errors[by_tid[tid]] = msg or "error"
        return report

    def select(
        self, aggregator_uuid: str, device_uuids: Iterable[str], timeout: float | None = None
    ) -> SelectionReport:
        """Select devices for an aggregator. Devices it already holds count as selected; devices
        held by another aggregator come back in ``errors`` with the reason."""
        return self._aggregator_command("SELECT", aggregator_uuid, device_uuids, timeout)

    def unselect(
        self, aggregator_uuid: str, device_uuids: Iterable[str], timeout: float | None = None
    ) -> SelectionReport:
        return self._aggregator_command("UNSELECT", aggregator_uuid, device_uuids, timeout)

    def delete_aggregator(self, aggregator_uuid: str, timeout: float | None = None) -> None:
        tid = new_transaction_id()
        body = {"aggregator_uuid": aggregator_uuid, "type": "DELETE", "transaction_id": tid}
        answers, missing = self._request_many(
            [(tid, channels.AGGREGATOR_COMMANDS, orjson.dumps(body))], timeout
        )
        if missing:
            raise ExchangeError(f"deleting aggregator {aggregator_uuid}: no answer in time")
        answer = answers[tid]
        assert isinstance(answer, AggregatorResponse)
        if answer.status != "deleted":
            raise ExchangeError(f"deleting aggregator {aggregator_uuid} failed: {answer.status}")

    # -- events and batch responses -------------------------------------------------------------

    def _spread(
        self, readers: list[Subscriber], names: list[str], handler: MessageHandler, label: str
    ) -> None:
        # Fresh connections (and a loop to read them) per call: redis-py's PubSub is not
        # thread-safe, so a running loop's subscriptions are never changed from another thread.
        fresh = [
            Subscriber(
                self.redis,
                handler,
                name=f"exchange-{label}-{len(readers) + i}",
                on_reconnect=self._on_reconnect,
            )
            for i in range(min(self._readers(len(names)), max(1, len(names))))
        ]
        for i, name in enumerate(names):
            fresh[i % len(fresh)].subscribe(name)
        loop = ReaderLoop(fresh, name=f"exchange-{label}-loop-{len(self._loops)}")
        self._loops.append(loop)
        loop.start()
        loop.wait_ready()
        readers.extend(fresh)

    def _readers(self, channels_count: int) -> int:
        if self._n_event_connections is not None:
            return max(1, self._n_event_connections)
        return readers_for(channels_count)

    def subscribe_events(self, aggregator_uuids: Iterable[str], handler: RawHandler) -> None:
        """Receive every event of these aggregators (spread over several connections)."""
        names = [channels.aggregator_events(a, self.config_id) for a in aggregator_uuids]
        self._spread(self._event_readers, names, self._size_guard(handler), "events")

    def _size_guard(self, handler: RawHandler) -> MessageHandler:
        """Drop (count, log with the channel) an event over ``max_message_bytes`` unparsed."""
        by_aggregator = _by_aggregator(handler)
        limit = self.max_message_bytes

        def on_message(channel: str, raw: bytes, t: float) -> None:
            if len(raw) > limit:
                self.oversized += 1
                log.error(
                    "event of %.1f MB on %s dropped unparsed: over the %.0f MB limit",
                    len(raw) / 1e6,
                    channel,
                    limit / 1e6,
                    extra={"aggregator": channels.aggregator_of(channel)},
                )
                return
            by_aggregator(channel, raw, t)

        return on_message

    def subscribe_answers(self, aggregator_uuids: Iterable[str], handler: RawHandler) -> None:
        """Receive the exchange's answers to these aggregators' batches."""
        names = [channels.batch_response(a, self.config_id) for a in aggregator_uuids]
        self._spread(self._response_readers, names, _by_aggregator(handler), "responses")

    @property
    def reconnects(self) -> int:
        return sum(
            s.reconnects for s in (self._control, *self._event_readers, *self._response_readers)
        )

    # -- batches --------------------------------------------------------------------------------

    def batch_message(
        self, aggregator_uuid: str, commands_json: bytes, transaction_id: str | None = None
    ) -> tuple[str, bytes]:
        """A BATCHED message from an already-serialized ``{asset_uuid: [command, ...]}`` object.

        Splicing bytes keeps a 100 000-command batch from being parsed and re-encoded here.
        """
        tid = transaction_id or new_transaction_id()
        head = orjson.dumps(
            {"type": "BATCHED", "transaction_id": tid, "aggregator_uuid": aggregator_uuid}
        )
        return tid, head[:-1] + b',"batch_commands":' + commands_json + b"}"

    def send_batches(self, batches: Iterable[OutgoingBatch]) -> int:
        """Publish BATCHED messages in one pipeline; returns how many were sent. A batch with
        no commands (``{}``) is not sent: gsy-e never answers one."""
        return self.publish_batches(
            self.batch_message(b.aggregator_uuid, b.commands_json, b.transaction_id)[1]
            for b in batches
            if not b.empty
        )

    def warm_up(self) -> None:
        """The publishing connection, opened (a ping) before the first round's batches."""
        self.redis.ping()

    def publish_batches(self, batches: Iterable[bytes]) -> int:
        """Publish ready BATCHED messages in one pipeline; returns how many were sent."""
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        channel = channels.batch_commands(self.config_id)
        for body in batches:
            pipe.publish(channel, body)
            n += 1
        if n:
            pipe.execute()
        return n

    # -- bringing a fleet up -------------------------------------------------------------------

    def bring_up(
        self,
        aggregators: Sequence[AggregatorRequest],
        timeout: float = 60.0,
        *,
        fleet_id: str = "",
    ) -> BroughtUp:
        """Create (or reuse) the aggregators, register every asset and market (pipelined), select
        what registered. With a ``fleet_id`` each aggregator's uuid is
        :func:`~gridfleet.exchange.link.aggregator_identity`, so a restart finds its own."""
        reused: list[str] = []
        uuids = {a.name: aggregator_identity(fleet_id, a.name) for a in aggregators}
        aggregator_uuid = self.create_aggregators(
            [a.name for a in aggregators],
            timeout=timeout,
            uuids=uuids if fleet_id else None,
            reused=reused,
        )
        asset_names = [n for a in aggregators for n in a.assets]
        market_names = [m for a in aggregators for m in a.markets]
        asset_uuid, unregistered = (
            self.register_many(asset_names, timeout=timeout) if asset_names else ({}, {})
        )
        # Markets register under their slug; the fleet knows them by name.
        slugs = {m: channels.slugify(m) for m in market_names}
        slug_uuid, slug_failed = (
            self.register_many(list(slugs.values()), timeout=timeout) if slugs else ({}, {})
        )
        market_uuid = {m: slug_uuid[slug] for m, slug in slugs.items() if slug in slug_uuid}
        unregistered.update(
            {m: slug_failed[slug] for m, slug in slugs.items() if slug in slug_failed}
        )
        errors: dict[str, str] = {}
        for agg in aggregators:
            devices = [asset_uuid[n] for n in agg.assets if n in asset_uuid]
            devices += [market_uuid[m] for m in agg.markets if m in market_uuid]
            if devices:
                errors.update(self.select(aggregator_uuid[agg.name], devices, timeout).errors)
        return BroughtUp(
            aggregator_uuid,
            asset_uuid,
            market_uuid,
            selection_errors=errors,
            unregistered=unregistered,
            reused=reused,
        )

    def close(self) -> None:
        for loop in self._loops:
            loop.stop()
        for loop in self._loops:
            loop.join(timeout=2)
        self.redis.close()

    def __enter__(self) -> RedisPubSubLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _by_aggregator(handler: RawHandler) -> MessageHandler:
    """Adapt a link-level handler to pub/sub messages: the channel names the aggregator."""

    def on_message(channel: str, raw: bytes, t: float) -> None:
        aggregator = channels.aggregator_of(channel)
        if aggregator is not None:
            handler(aggregator, raw, t)

    return on_message


def _names(names: Iterable[str], shown: int = 5) -> str:
    """``'a', 'b' and 3 more`` for an error line."""
    items = list(names)
    head = ", ".join(repr(n) for n in items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")
