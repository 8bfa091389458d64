"""A Redis lease: which of two (or more) processes of one role is the active one.

The lease is a key holding the holder's random token with a TTL of about one tick
(:func:`lease_ttl_s`). The active process renews it every third of the TTL, on a thread of its
own (a busy loop must not lose it); a standby tries to take it as often. A holder that dies
(kill -9) stops renewing, the key expires, a standby takes it within a TTL plus a third.

Holding the lease is not enough to publish: a holder that was paused past its TTL may believe it
still holds it. :func:`fenced_publish` checks the token and records the round's publication in
one atomic step on the broker (a Lua script), so two processes never publish for one round.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)

MIN_TTL_S = 0.5
TTL_SHARE = 0.8
"""The lease's TTL is this share of the tick budget (at least :data:`MIN_TTL_S`): a standby
takes over within about a round."""

_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder then
  -- Gone while held (a restarted broker lost it): the holder keeps it.
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_FENCED_PUBLISH = """
local out = {}
local holder = redis.call('GET', KEYS[1]) == ARGV[1]
for i = 2, #KEYS do
  if not holder then out[#out + 1] = 0
  elseif redis.call('SET', KEYS[i], ARGV[1], 'NX', 'EX', ARGV[2]) then out[#out + 1] = 1
  else out[#out + 1] = -1 end
end
return out
"""

PUBLISHED_TTL_S = 3600
"""How long a round's publication record is kept (far longer than a round can be in flight)."""


def lease_ttl_s(tick_budget_s: float) -> float:
    return max(MIN_TTL_S, TTL_SHARE * tick_budget_s)


class Lease:
    """One process's claim on ``key``: taken, renewed and given up by :meth:`keep` (a thread).

    ``on_change(held)`` is called on the keeper thread when the lease is taken or lost.
    """

    def __init__(
        self,
        broker: redis.Redis,
        key: str,
        ttl_s: float,
        *,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.broker = broker
        self.key = key
        self.ttl_s = ttl_s
        # Host and pid first: an operator (or a test) reading the key sees who holds it.
        self.token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(8)}"
        self.on_change = on_change
        self._held_until = 0.0  # monotonic: past it, the lease may have gone to another
        self._was_held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Whether this process held the lease at its last renewal, and that renewal has not
        run out yet. A hint for what to do; publishing is decided by :func:`fenced_publish`."""
        return time.monotonic() < self._held_until

    def holder(self) -> str | None:
        raw = self.broker.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else None

    def step(self) -> bool:
        """Renew the lease if held, else try to take it; whether it is held now."""
        t0 = time.monotonic()
        px = max(1, round(self.ttl_s * 1000))
        try:
            if self._was_held:
                ok = bool(self.broker.eval(_RENEW, 1, self.key, self.token, px))
            else:
                ok = bool(self.broker.set(self.key, self.token, nx=True, px=px))
        except redis.RedisError as exc:
            # The broker is away: nobody can take the lease meanwhile, and what the holder
            # does with the broker fails anyway (and is counted there); it stays the holder.
            log.debug("lease %s: broker call failed (%s)", self.key, exc)
            if self._was_held:
                self._held_until = t0 + self.ttl_s
            return self._was_held
        if ok:
            self._held_until = t0 + self.ttl_s
        if ok != self._was_held:
            self._was_held = ok
            if not ok:
                self._held_until = 0.0
            if self.on_change is not None:
                self.on_change(ok)
        return ok

    def keep(self) -> Lease:
        """Start the keeper thread: renew (or try to take) the lease every third of its TTL."""

        def loop() -> None:
            while not self._stop.is_set():
                self.step()
                self._stop.wait(self.ttl_s / 3)

        self._thread = threading.Thread(target=loop, daemon=True, name=f"lease:{self.key}")
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the keeper and give the lease up (a standby takes it at once, not after a TTL)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._held_until = 0.0
        if self._was_held:
            try:
                self.broker.eval(_RELEASE, 1, self.key, self.token)
            except redis.RedisError as exc:
                log.debug("lease %s not released (%s); it expires", self.key, exc)
            self._was_held = False


def fenced_publish(broker: redis.Redis, lease: Lease, published_key: str) -> int:
    """Record that this lease holder publishes the round (or round part) of ``published_key``,
    atomically with the check that it still holds the lease. 1: publish; 0: the lease is
    someone else's; -1: it was already published (by this process or one before a takeover)."""
    return fenced_publish_parts(broker, lease, [published_key])[0]


def fenced_publish_parts(broker: redis.Redis, lease: Lease, published_keys: list[str]) -> list[int]:
    """:func:`fenced_publish` for several parts of a round at once (one script call): a verdict
    per key, in order."""
    if not published_keys:
        return []
    got = broker.eval(
        _FENCED_PUBLISH,
        1 + len(published_keys),
        lease.key,
        *published_keys,
        lease.token,
        PUBLISHED_TTL_S,
    )
    return [int(v) for v in got]
