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


_NO_COPY_BYTES = 1 << 16  # events above this size are published without a copy


class RedisOutbox:
    """An :class:`~gridfleet.simulator.door.Outbox` over one Redis pipeline."""

    __slots__ = ("_cid", "_pipe")

    def __init__(self, client: redis.Redis, config_id: str) -> None:
        self._pipe = client.pipeline(transaction=False)
        self._cid = config_id

    def aggregator_event(self, aggregator: str, payload: bytes) -> None:
        # A memoryview is sent as it is: redis-py's hiredis packer would copy every event
        # into a new buffer first (70 MB in a settling round at 100 000 assets).
        if len(payload) > _NO_COPY_BYTES:
            self._pipe.publish(
                channels.aggregator_events(aggregator, self._cid), memoryview(payload)
            )
        else:
            self._pipe.publish(channels.aggregator_events(aggregator, self._cid), payload)

    def asset_event(self, name: str, event: str, payload: bytes) -> None:
        self._pipe.publish(channels.asset_events(name, event), payload)

    def batch_response(self, aggregator: str, payload: bytes) -> None:
        self._pipe.publish(channels.batch_response(aggregator, self._cid), payload)

    def aggregator_response(self, payload: bytes) -> None:
        self._pipe.publish(channels.AGGREGATOR_RESPONSE, payload)

    def register_response(self, name: str, payload: bytes) -> None:
        self._pipe.publish(channels.register_participant_response(name), payload)

    def control_response(self, command: str, payload: bytes) -> None:
        self._pipe.publish(channels.sim_control_response(command, self._cid), payload)

    def heartbeat(self, payload: bytes) -> None:
        self._pipe.publish(channels.HEARTBEAT, payload)

    def send(self) -> None:
        try:
            self._pipe.execute()
        except _LOST as exc:
            raise DeliveryFailed(redact(str(exc)) or type(exc).__name__) from None


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
