"""The one Celery app definition of gridfleet: the workers run it, the ingress sends with it.

Both sides build their app with :func:`make_app` from the same settings table, so a producer and
a worker can never disagree on the serializer, the queue or the broker's transport options. The
platform sends tasks by name (:data:`TASK_NAME`); ``gridfleet.workers`` registers the task under
that name on its app, so the platform never imports worker code.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery

TASK_NAME = "gridfleet.evaluate_shard"
QUEUE = "gridfleet.shards"


_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
}
_SSL_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def broker_ssl(broker_url: str) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for a ``rediss://`` broker, from the URL's query (the same
    ``ssl_ca_certs`` / ``ssl_certfile`` / ``ssl_keyfile`` / ``ssl_cert_reqs`` redis-py reads);
    None for a plain broker. Without it kombu would connect to a rediss:// broker without
    verifying its certificate; the default here is to verify it (``ssl_cert_reqs=required``)."""
    parts = urlsplit(broker_url)
    if parts.scheme.lower() != "rediss":
        return None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs={reqs!r}: expected required, optional or none")
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    options.update({k: query[k] for k in _SSL_KEYS if k in query})
    return options


def celery_settings(
    broker_url: str,
    *,
    task_events: bool = False,
    soft_time_limit: float = 5.0,
    soft_shutdown_timeout: float = 10.0,
) -> dict[str, Any]:
    """Celery's configuration for gridfleet, and why each value is what it is."""
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
        # rediss://: verify the broker's certificate against the URL's CA (see broker_ssl)
        "broker_use_ssl": broker_ssl(broker_url) or False,
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


def make_app(
    broker_url: str,
    *,
    task_events: bool = False,
    soft_shutdown_timeout: float = 10.0,
    include: list[str] | None = None,
    set_as_current: bool = True,
) -> Celery:
    """gridfleet's Celery app on ``broker_url``; ``include`` names the modules defining tasks."""
    app = Celery("gridfleet", include=include or [], set_as_current=set_as_current)
    app.conf.update(
        celery_settings(
            broker_url, task_events=task_events, soft_shutdown_timeout=soft_shutdown_timeout
        )
    )
    return app
