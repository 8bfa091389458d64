"""The exchange's Redis door: gsy-e's pub/sub protocol over Redis.

- :class:`Inbox` runs one reader thread on a pub/sub connection and queues every inbound
  message with its arrival time. It never parses: the engine thread does, so all state has a
  single owner and needs no locks. When Redis goes away (a restart) it resubscribes with
  backoff; what was published meanwhile is lost, as pub/sub always loses it.
- :class:`RedisOutbox` publishes what the engine sends in one pass through one pipeline; when
  Redis is unreachable it raises :class:`~gridfleet.simulator.door.DeliveryFailed` at once (no
  retry with backoff: the engine's clock must not stall) and the next pass reconnects.
- :class:`RedisDoor` connects (or starts an embedded ``redis-server``), opens the inbox and
  hands the engine outboxes.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gridfleet.exchange import channels
from gridfleet.runtime.redact import redact
from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.door import (
    AGG_COMMAND,
    BATCH,
    CONTROL,
    REGISTER,
    DeliveryFailed,
    Inbound,
    Payload,
    Pieces,
    payload_size,
)

log = logging.getLogger(__name__)

REGISTER_PATTERN = "*/register_participant"
_REGISTER_SUFFIX = len("/register_participant")
_LOST = (redis.ConnectionError, redis.TimeoutError, OSError)
# Resubscribing after a lost connection: first try soon, then back off up to this.
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.1, 2.0


def _client(url: str, **kwargs: object) -> redis.Redis:
    """A client that fails fast: one immediate retry (a stale pooled connection), no backoff."""
    return redis.Redis.from_url(
        url, retry=Retry(NoBackoff(), 1), socket_connect_timeout=2, **kwargs
    )


class Inbox:
    """Subscribes to every channel the exchange listens on; puts messages on ``queue``."""

    def __init__(
        self, client: redis.Redis, inbound: queue.Queue[Inbound], config_id: str = ""
    ) -> None:
        self.client = client
        self.config_id = config_id
        self.queue = inbound
        self._pubsub = client.pubsub(ignore_subscribe_messages=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnects = 0  # how often the connection was lost and subscribed again
        self._kinds = {
            channels.AGGREGATOR_COMMANDS: AGG_COMMAND,
            channels.batch_commands(config_id): BATCH,
            **{channels.sim_control(c, config_id): CONTROL for c in channels.SIM_CONTROL_COMMANDS},
        }

    def start(self, timeout: float = 10.0) -> None:
        """Subscribe, wait until Redis confirmed every subscription, then start reading."""
        self._subscribe(timeout)
        self._thread = threading.Thread(target=self._run, name="sim-inbox", daemon=True)
        self._thread.start()

    def _subscribe(self, timeout: float) -> None:
        self._pubsub.subscribe(*self._kinds)
        self._pubsub.psubscribe(REGISTER_PATTERN)
        expected = len(self._kinds) + 1
        deadline = time.monotonic() + timeout
        while expected and time.monotonic() < deadline:
            msg = self._pubsub.get_message(timeout=0.1)
            if msg and msg["type"] in ("subscribe", "psubscribe"):
                expected -= 1
        if expected:
            raise TimeoutError("Redis did not confirm the exchange's subscriptions")

    def _resubscribe(self, reason: BaseException) -> None:
        """A new pub/sub connection with every subscription, retried with backoff until it
        works or the inbox stops. One log line when lost, one when back."""
        lost_at = time.monotonic()
        log.warning(
            "exchange inbox lost Redis (%s); resubscribing",
            redact(str(reason)) or type(reason).__name__,
        )
        wait = RECONNECT_FIRST_S
        while not self._stop.wait(wait):
            with contextlib.suppress(Exception):  # the old connection is dead anyway
                self._pubsub.close()
            self._pubsub = self.client.pubsub(ignore_subscribe_messages=False)
            try:
                self._subscribe(timeout=2.0)
            except (*_LOST, TimeoutError, ValueError):
                wait = min(RECONNECT_MAX_S, wait * 2)
                continue
            self.reconnects += 1
            log.warning(
                "exchange inbox subscribed again after %.1f s (messages sent meanwhile are lost)",
                time.monotonic() - lost_at,
            )
            return

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._pubsub.get_message(timeout=0.05)
            except (*_LOST, ValueError) as exc:
                if self._stop.is_set():
                    return
                self._resubscribe(exc)
                continue
            if msg is None:
                continue
            at = time.time()
            mtype = msg["type"]
            channel = (
                msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
            )
            data = msg["data"] if isinstance(msg["data"], bytes) else str(msg["data"]).encode()
            if mtype == "pmessage":
                if "/response/" in channel:
                    continue  # our own answers also match */register_participant
                self.queue.put(Inbound(REGISTER, channel[:-_REGISTER_SUFFIX], data, at))
            elif mtype == "message":
                kind = self._kinds.get(channel, CONTROL)
                origin = channel.rsplit("/", 1)[-1] if kind == CONTROL else channel
                self.queue.put(Inbound(kind, origin, data, at))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with contextlib.suppress(Exception):  # closing a dead connection is fine
            self._pubsub.close()


# Payload pieces at least this long are written where they lie; shorter ones (and the commands'
# headers) are copied into one buffer between them, so a round is a few thousand writes.
_NO_COPY_BYTES = 1 << 14


class RedisOutbox:
    """An :class:`~gridfleet.simulator.door.Outbox` writing PUBLISH commands onto one pooled
    connection in one go, then reading their replies (a pipeline, packed here rather than by
    redis-py: its packer would copy every large event into a new buffer first, and it takes
    a payload in one piece only, where the engine's :class:`~gridfleet.simulator.door.Pieces`
    share one tree between an aggregator's tick and trade events)."""

    __slots__ = ("_cid", "_client", "_count", "_out", "_small")

    def __init__(self, client: redis.Redis, config_id: str) -> None:
        self._client = client
        self._cid = config_id
        self._out: list[bytes | bytearray | memoryview] = []  # what send() writes, in order
        self._small = bytearray()  # headers and short pieces since the last long one
        self._count = 0  # commands queued

    def _publish(self, channel: str, payload: Payload) -> None:
        pieces = payload if isinstance(payload, Pieces) else (payload,)
        ch = channel.encode()
        small = self._small
        small += b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n" % (
            len(ch),
            ch,
            payload_size(payload),
        )
        for piece in pieces:
            if len(piece) < _NO_COPY_BYTES:
                small += piece
                continue
            if small:
                self._out.append(small)
                small = self._small = bytearray()
            self._out.append(piece)
        small += b"\r\n"
        self._count += 1

    def aggregator_event(self, aggregator: str, payload: Payload) -> None:
        self._publish(channels.aggregator_events(aggregator, self._cid), payload)

    def asset_event(self, name: str, event: str, payload: bytes) -> None:
        self._publish(channels.asset_events(name, event), payload)

    def batch_response(self, aggregator: str, payload: Payload) -> None:
        self._publish(channels.batch_response(aggregator, self._cid), payload)

    def aggregator_response(self, payload: bytes) -> None:
        self._publish(channels.AGGREGATOR_RESPONSE, payload)

    def register_response(self, name: str, payload: bytes) -> None:
        self._publish(channels.register_participant_response(name), payload)

    def control_response(self, command: str, payload: bytes) -> None:
        self._publish(channels.sim_control_response(command, self._cid), payload)

    def heartbeat(self, payload: bytes) -> None:
        self._publish(channels.HEARTBEAT, payload)

    def send(self) -> None:
        if not self._count:
            return
        if self._small:
            self._out.append(self._small)
        out, count = self._out, self._count
        self._out, self._small, self._count = [], bytearray(), 0
        pool = self._client.connection_pool
        try:
            conn = pool.get_connection()  # connects a new connection
        except _LOST as exc:
            raise DeliveryFailed(redact(str(exc)) or type(exc).__name__) from None
        try:
            try:
                _write_and_read(conn, out, count)
            except _LOST:
                # once more on a new connection, as the client's own retry would: a pooled
                # connection goes stale when Redis restarts, and only writing to it shows it
                conn.disconnect()
                _write_and_read(conn, out, count)
        except _LOST as exc:
            conn.disconnect()
            raise DeliveryFailed(redact(str(exc)) or type(exc).__name__) from None
        finally:
            pool.release(conn)


def _write_and_read(
    conn: redis.connection.AbstractConnection,
    out: list[bytes | bytearray | memoryview],
    count: int,
) -> None:
    """Write the packed commands, then read every reply; the first error reply is raised
    after all are read (the connection stays usable)."""
    conn.send_packed_command(out, check_health=False)
    error: redis.ResponseError | None = None
    for _ in range(count):
        try:
            conn.read_response()
        except redis.ResponseError as exc:
            error = error or exc
    if error is not None:
        raise error


class RedisDoor:
    """Aggregators reach the engine over Redis: an inbox thread in, pipelines out."""

    def __init__(self, redis_url: str | None, config_id: str = "") -> None:
        self.url = redis_url  # None: an embedded redis-server, started by :meth:`connect`
        self.config_id = config_id
        self.inbox: Inbox | None = None
        self._server: RedisServer | None = None
        self._pub: redis.Redis | None = None

    def connect(self) -> None:
        """Start the embedded Redis if there is no URL, and connect the publisher."""
        if self.url is None:
            self._server = RedisServer().start()
            self.url = self._server.url
        self._pub = _client(self.url, socket_timeout=10)

    def open_inbox(self, inbound: queue.Queue[Inbound]) -> None:
        """Subscribe and start the reader thread, which puts what it reads on ``inbound``."""
        assert self.url is not None, "connect() first"
        self.inbox = Inbox(_client(self.url, socket_read_size=1 << 20), inbound, self.config_id)
        self.inbox.start()

    def outbox(self) -> RedisOutbox:
        assert self._pub is not None, "connect() first"
        return RedisOutbox(self._pub, self.config_id)

    def close(self) -> None:
        """Stop reading, close the connections, stop an embedded Redis."""
        if self.inbox is not None:
            self.inbox.stop()
        if self._pub is not None:
            self._pub.close()
        if self._server is not None:
            self._server.stop()
