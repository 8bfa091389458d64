"""The one task gridfleet runs: evaluate a stored shard of a round.

The message carries keys, not payloads (kombu base64-encodes and re-JSONs bodies: big payloads
stay in Redis). The task is idempotent per (round, shard); see :mod:`gridfleet.platform.shard`.
"""

from __future__ import annotations

import logging
import os
import socket
from functools import lru_cache

import redis
from celery.exceptions import SoftTimeLimitExceeded

from gridfleet.platform.dispatch import TASK_NAME
from gridfleet.platform.keys import Keys
from gridfleet.platform.observers import Observer, Observers, ShardEvaluated
from gridfleet.platform.shard import claim_shard, run_shard
from gridfleet.platform.shard_inputs import InputUnreachable
from gridfleet.workers.app import app
from gridfleet.workers.metrics import WorkerMetrics

log = logging.getLogger(__name__)

_WHO = f"{socket.gethostname()}:{os.getpid()}"


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_keepalive=True, health_check_interval=10)


@lru_cache(maxsize=1)
def observers() -> Observer:
    """This process's observers; built in the pool child on its first shard (after the fork)."""
    return Observers([WorkerMetrics()])


@app.task(name=TASK_NAME, ignore_result=True)
def evaluate_shard(namespace: str, round_id: str, shard: int) -> None:
    """Load shard ``shard`` of ``round_id``, run its strategies, store commands and state."""
    r, keys = _redis(app.conf.broker_url), Keys(namespace)
    if not claim_shard(r, keys, round_id, shard, _WHO):
        # The coordinator hedged it, or this is a redelivery of a shard a dead worker had
        # started (the coordinator runs that one at the deadline).
        log.debug("round %s shard %d: already claimed, skipped", round_id, shard)
        return
    try:
        run = run_shard(r, keys, round_id, shard)
    except SoftTimeLimitExceeded:
        log.error("round %s shard %d: soft time limit; the coordinator hedges it", round_id, shard)
        return
    except InputUnreachable as exc:
        log.error("round %s shard %d: %s", round_id, shard, exc)
        return
    except LookupError as exc:
        log.warning("round %s shard %d: %s (dropped)", round_id, shard, exc)
        return
    out = run.output
    observers().shard_evaluated(
        ShardEvaluated(
            assets=run.assets,
            duration_s=run.duration_s,
            commands=out.commands,
            refused=len(out.refusals),
            errors=len(out.errors),
        )
    )
    log.debug(
        "round %s shard %d: %d commands in %.1f ms",
        round_id,
        shard,
        run.output.commands,
        run.duration_s * 1e3,
    )
