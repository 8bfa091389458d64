"""Pub/sub connections that reconnect by themselves, read by one thread each group.

A 100 000-asset round is ~1 000 events arriving at once, spread over up to 64 connections (see
:data:`~gridfleet.exchange.redis_pubsub.AGGREGATORS_PER_READER`). Read by a thread per
connection, the threads spend more time handing the GIL to each other than reading: measured
on a 2-core machine, 1 000 events of 33 KB over 64 connections took 130 ms and 150 ms of CPU
with a thread each, 45 ms and 46 ms with one thread polling all 64 sockets. So a
:class:`ReaderLoop` polls its connections' sockets and takes every message that is ready off
each; a :class:`Subscriber` is one connection's state (what it subscribes to, its reconnects).

Two rules hold as before: the handler must be cheap (the loop only hands raw bytes on), and a
connection that is lost (Redis closes a subscriber whose output buffer passes its limit) is
opened and subscribed again with backoff, alone: the others keep being read meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable, Sequence

import redis

from gridfleet.exchange.link import ExchangeError

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, float], None]
"""``(channel, raw message, monotonic receive time)``; must return quickly."""

DROP_HINT = (
    "Redis closes a subscriber whose output buffer passes client-output-buffer-limit pubsub"
    " (32 MB by default): one message that large, or a reader that fell behind, does this"
)

POLL_S = 0.5
"""The longest the loop sleeps without looking at its stop flag and its reconnections."""

BACKOFF_S = (0.05, 2.0)
"""First and longest wait before opening a lost connection again (doubling in between)."""

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class Subscriber:
    """One pub/sub connection's subscriptions and state; read by a :class:`ReaderLoop`."""

    def __init__(
        self,
        client: redis.Redis,
        handler: MessageHandler,
        *,
        name: str,
        on_reconnect: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self._client = client
        self._handler = handler
        self._on_reconnect = on_reconnect
        self._channels: set[str] = set()
        self._patterns: set[str] = set()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._pubsub: redis.client.PubSub | None = None
        self._pending_confirms = 0
        self._connected_once = False
        self._retry_at = 0.0  # monotonic: when to open the connection again
        self._backoff = BACKOFF_S[0]
        self.reconnects = 0

    def subscribe(self, *names: str) -> None:
        with self._lock:
            self._channels.update(names)
            if self._pubsub is not None and names:
                self._pubsub.subscribe(*names)
                self._pending_confirms += len(names)

    def psubscribe(self, *patterns: str) -> None:
        with self._lock:
            self._patterns.update(patterns)
            if self._pubsub is not None and patterns:
                self._pubsub.psubscribe(*patterns)
                self._pending_confirms += len(patterns)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the subscriptions given so far are confirmed by Redis."""
        if not self._ready.wait(timeout):
            raise ExchangeError(f"{self.name}: could not subscribe within {timeout} s")

    # -- called by the loop's thread only --------------------------------------------------------

    def _open(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=False)
        with self._lock:
            self._pending_confirms = len(self._channels) + len(self._patterns)
            try:
                if self._channels:
                    pubsub.subscribe(*self._channels)
                if self._patterns:
                    pubsub.psubscribe(*self._patterns)
            except BaseException:
                with contextlib.suppress(Exception):
                    pubsub.close()
                raise
            self._pubsub = pubsub
        if self._pending_confirms == 0:
            self._ready.set()
        if self._connected_once:
            self.reconnects += 1
            log.warning("%s: reconnected and subscribed again", self.name)
            if self._on_reconnect:
                self._on_reconnect(self.name)
        self._connected_once = True
        self._backoff = BACKOFF_S[0]

    def _socket(self) -> object | None:
        pubsub = self._pubsub
        conn = pubsub.connection if pubsub is not None else None
        return getattr(conn, "_sock", None)

    def _drain(self) -> None:
        """Hand on every message already readable on this connection."""
        pubsub = self._pubsub
        if pubsub is None:
            return
        handler = self._handler
        while True:
            msg = pubsub.get_message(timeout=0)
            if msg is None:
                return
            kind = msg["type"]
            if kind in ("message", "pmessage"):
                channel = msg["channel"]
                handler(
                    channel.decode() if isinstance(channel, bytes) else channel,
                    msg["data"],
                    time.monotonic(),
                )
            elif kind in ("subscribe", "psubscribe"):
                self._pending_confirms -= 1
                if self._pending_confirms <= 0:
                    self._ready.set()

    def _lost(self, exc: BaseException) -> None:
        self._ready.clear()
        log.warning(
            "%s: lost Redis (%s); retrying in %.2f s; messages published meanwhile on"
            " its %d channels are lost (%s)%s",
            self.name,
            exc,
            self._backoff,
            len(self._channels) + len(self._patterns),
            ", ".join(sorted(self._channels)[:4]) + ("..." if len(self._channels) > 4 else ""),
            f". {DROP_HINT}" if self._connected_once else "",
        )
        self._close()
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_S[1])

    def _close(self) -> None:
        with self._lock:
            if self._pubsub is not None:
                # Closing a dead socket may raise; there is nothing more to do with it.
                with contextlib.suppress(Exception):
                    self._pubsub.close()
                self._pubsub = None


class ReaderLoop(threading.Thread):
    """One thread reading several :class:`Subscriber` connections: poll, drain, reconnect."""

    def __init__(self, subscribers: Sequence[Subscriber], *, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.subscribers = list(subscribers)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def wait_ready(self, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        for sub in self.subscribers:
            sub.wait_ready(max(0.0, end - time.monotonic()))

    def run(self) -> None:
        poller = select.poll()
        by_fd: dict[int, Subscriber] = {}
        try:
            while not self._halt.is_set():
                if self._reopen_due() or any(s._pubsub is None for s in by_fd.values()):
                    poller, by_fd = self._watch()
                for fd, _ in poller.poll(self._wait_ms()):
                    sub = by_fd.get(fd)
                    if sub is not None:
                        self._drain(sub)
        finally:
            for sub in self.subscribers:
                sub._close()

    def _watch(self) -> tuple[select.poll, dict[int, Subscriber]]:
        """A poller over the open connections (after one opened or was lost)."""
        poller = select.poll()
        by_fd: dict[int, Subscriber] = {}
        for sub in self.subscribers:
            sock = sub._socket()
            if sock is None:
                continue
            try:
                fd = int(sock.fileno())  # type: ignore[attr-defined]
            except (OSError, ValueError):
                continue
            if fd >= 0:
                by_fd[fd] = sub
                poller.register(fd, select.POLLIN)
        return poller, by_fd

    def _drain(self, sub: Subscriber) -> None:
        # Until nothing is readable: what hiredis (or TLS) buffered does not show in poll.
        try:
            sub._drain()
        except CONNECTION_ERRORS as exc:
            sub._lost(exc)

    def _reopen_due(self) -> bool:
        """Open the connections due (first or again); whether any was tried."""
        now = time.monotonic()
        tried = False
        for sub in self.subscribers:
            if sub._pubsub is None and now >= sub._retry_at:
                tried = True
                try:
                    sub._open()
                except CONNECTION_ERRORS as exc:
                    sub._lost(exc)
                    continue
                self._drain(sub)  # confirmations (and messages) that came with the subscribe
        return tried

    def _wait_ms(self) -> int:
        waits = [POLL_S]
        now = time.monotonic()
        waits += [max(0.0, s._retry_at - now) for s in self.subscribers if s._pubsub is None]
        return int(min(waits) * 1000)
