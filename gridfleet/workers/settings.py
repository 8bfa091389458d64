"""Celery settings for gridfleet's shard workers, and why each is what it is."""

from __future__ import annotations

from typing import Any

from gridfleet.platform.dispatch import QUEUE


def celery_settings(
    broker_url: str,
    *,
    task_events: bool = False,
    soft_time_limit: float = 5.0,
    soft_shutdown_timeout: float = 10.0,
) -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        # msgpack only: a worker must never unpickle what arrives on the broker.
        "task_serializer": "msgpack",
        "result_serializer": "msgpack",
        "accept_content": ["msgpack"],
        "result_accept_content": ["msgpack"],
        # Results travel through Redis keys and the round's done list, never Celery's result
        # backend: its polling costs 0.5 s, half a tick.
        "result_backend": None,
        "task_ignore_result": True,
        # A shard that dies with its worker is redelivered; one still running is not doubled.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One shard at a time per process: a prefetched shard waits behind a slow one.
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": soft_time_limit,
        "task_time_limit": soft_time_limit + 2,
        "task_default_queue": QUEUE,
        # Task events cost 27-40 % of throughput; on only when someone watches in Flower.
        "worker_send_task_events": task_events,
        "task_send_sent_event": task_events,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Redeliver a dead worker's shard soon (the default is an hour); expiry drops stale ones.
        "broker_transport_options": {"visibility_timeout": 30},
        # On SIGTERM (remapped to SIGQUIT in containers) finish the running shard for this long.
        "worker_soft_shutdown_timeout": soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }
