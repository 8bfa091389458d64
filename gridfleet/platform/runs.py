"""Runs: one pass of a fleet over one simulation, so that runs follow each other on one broker.

A run has an id, ``<UTC timestamp>-<random>`` (:func:`new_run_id`), chosen by whoever starts
the run: ``gridfleet run`` and the demo pass one to their ingress and coordinator
(``--run-id``); an ingress started alone makes one. It is published under
``<ns>:run:current``; the run's counters (with its ``finished`` flag), round list, event stream
and publication records sit under ``<ns>:run:<id>:`` (:class:`~gridfleet.platform.keys.Keys`).

What survives runs: the fleet spec and registry, the aggregators and their selections (the
exchange's), worker heartbeats and the leases. What does not: strategy state, the last
rejections and market answers, which a new run empties (a rerun against a new simulation must
not inherit a previous round's state). An ingress restarted mid-run joins the current run,
and keeps its state, because that run is not finished.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from datetime import UTC, datetime

import redis

from gridfleet.platform.keys import Keys

log = logging.getLogger(__name__)

FINISHED_RUN_TTL_S = 7 * 24 * 3600
"""A run's keys are kept this long after the next run started (for reports), then expire."""

_JOIN = """
local ns, wanted, candidate = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('GET', KEYS[1])
if wanted == '' then
  if current then
    local finished = redis.call('HGET', ns .. ':run:' .. current .. ':counters', 'finished')
    if not finished then return {current, 0} end
  end
  wanted = candidate
elseif current == wanted then
  return {current, 0}
end
redis.call('SET', KEYS[1], wanted)
redis.call('HSET', ns .. ':run:' .. wanted .. ':meta', 'started_at', ARGV[4], 'started_by', ARGV[5],
  'previous', current or '')
if current then
  for _, suffix in ipairs({'counters', 'events', 'rounds', 'meta'}) do
    redis.call('EXPIRE', ns .. ':run:' .. current .. ':' .. suffix, tonumber(ARGV[6]))
  end
end
redis.call('UNLINK', KEYS[2], KEYS[3], KEYS[4])
return {wanted, 1}
"""


def new_run_id() -> str:
    """A fresh run id: sorts by start time, unique across machines."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def join_run(broker: redis.Redis, keys: Keys, wanted: str | None = None) -> tuple[str, bool]:
    """Join run ``wanted`` (start it if it is not the current one), or, without one, the
    current run if it is not finished (else start a new one). Atomic, so two processes
    starting at once end up in one run. Returns the run id and whether this call started it.
    """
    got = broker.eval(
        _JOIN,
        4,
        keys.current_run,
        keys.state,
        keys.rejections,
        keys.market_answers,
        keys.ns,
        wanted or "",
        new_run_id(),
        f"{time.time():.3f}",
        socket.gethostname(),
        FINISHED_RUN_TTL_S,
    )
    run_id, started = got
    run = run_id.decode() if isinstance(run_id, bytes) else str(run_id)
    return run, bool(started)


def current_run(broker: redis.Redis, keys: Keys) -> str | None:
    raw = broker.get(keys.current_run)
    return raw.decode() if isinstance(raw, bytes) else None


def is_finished(broker: redis.Redis, keys: Keys) -> bool:
    """Whether the run ``keys`` is scoped to got the exchange's finish."""
    return bool(broker.hget(keys.counters, "finished"))


def wait_for_run(
    broker: redis.Redis, keys: Keys, wanted: str | None, stop: threading.Event
) -> str | None:
    """Until run ``wanted`` is current (without one: until an unfinished run is current);
    its id, or None when ``stop`` was set first."""
    said = False
    while not stop.is_set():
        try:
            run = current_run(broker, keys)
            if run is not None and (
                run == wanted if wanted else not is_finished(broker, keys.for_run(run))
            ):
                return run
        except redis.ConnectionError as exc:
            log.error("broker unreachable (%s); retrying", exc)
        if not said:
            log.info("waiting for %s to start", f"run {wanted}" if wanted else "a run")
            said = True
        stop.wait(0.2)
    return None
