"""Runs: one fleet's successive runs on one broker, kept apart.

A run is what one exchange simulation sees, from the first ingress's bring-up to the exchange's
finish. The broker's per-run records (the counters hash, the events stream, the round list) start
empty with each run, and the finish flag names the run it ends, so a second ``gridfleet run`` on
the same broker neither inherits the first one's counts nor stops on its finish. An ingress that
starts while a run is going on (a restart after kill -9, a standby) joins it.

Strategy state (``Keys.state``) is per asset, not per run: it is what a restarted process needs.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

import redis

from gridfleet.platform.keys import Keys

log = logging.getLogger(__name__)

FINISHED = "finished"
"""The counters-hash field ingress sets, to the run's id, when the exchange sent its finish."""


def new_run_id(now: datetime | None = None) -> str:
    """``20261202T183000Z-3f9a1c``: sortable by start, unique."""
    at = now or datetime.now(UTC)
    return f"{at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def begin_or_join(broker: redis.Redis, keys: Keys) -> tuple[str, bool]:
    """The run an ingress belongs to, and whether it is new.

    The current run is joined when it has not finished; otherwise a new one begins, with the
    previous run's counters, events and rounds cleared. Atomic (WATCH/MULTI): ingress partitions
    starting together all end up in the same run.
    """
    outcome: list[tuple[str, bool]] = []

    def decide(pipe: redis.client.Pipeline) -> None:
        current = pipe.get(keys.run)
        finished = pipe.hget(keys.counters, FINISHED)
        outcome.clear()
        if current is not None and finished != current:
            outcome.append((_text(current), False))
            return
        run = new_run_id()
        pipe.multi()
        pipe.delete(keys.counters, keys.events, keys.rounds)
        pipe.set(keys.run, run)
        outcome.append((run, True))

    broker.transaction(decide, keys.run, keys.counters)
    run, new = outcome[0]
    log.info("run %s %s", run, "begins" if new else "joined (it has not finished)")
    return run, new


def mark_finished(broker: redis.Redis, keys: Keys, run: str) -> None:
    """The exchange finished ``run``: its coordinator may stop."""
    broker.hset(keys.counters, FINISHED, run)


def has_finished(broker: redis.Redis, keys: Keys, run: str | None) -> bool:
    """Has ``run`` (the one this process has seen rounds of) finished? False for no run yet: a
    coordinator that starts before the run's ingress must not stop on the previous finish."""
    if run is None:
        return False
    flag = broker.hget(keys.counters, FINISHED)
    return flag is not None and _text(flag) == run


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
