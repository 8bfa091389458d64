"""The Celery app of gridfleet's workers (``gridfleet worker`` runs it).

The broker URL comes from ``GRIDFLEET_BROKER_URL``; it is also where shard inputs, results and
strategy state live. Task events (for Flower) are on when ``GRIDFLEET_TASK_EVENTS=1``.
"""

from __future__ import annotations

import os
import socket
import threading

import redis
from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from gridfleet.workers.settings import celery_settings

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
HEARTBEAT_EVERY_S = 5
HEARTBEAT_TTL_S = 30


def broker_url() -> str:
    return os.environ.get("GRIDFLEET_BROKER_URL", DEFAULT_BROKER)


def make_app(url: str | None = None, *, task_events: bool | None = None) -> Celery:
    if task_events is None:
        task_events = os.environ.get("GRIDFLEET_TASK_EVENTS", "0") == "1"
    app = Celery("gridfleet", include=["gridfleet.workers.tasks"])
    app.conf.update(celery_settings(url or broker_url(), task_events=task_events))
    return app


app = make_app()

_stop_heartbeat = threading.Event()


def heartbeat_key(namespace: str, hostname: str) -> str:
    return f"{namespace}:alive:worker:{hostname}"


def _heartbeat(url: str, key: str) -> None:
    client = redis.Redis.from_url(url)
    while not _stop_heartbeat.is_set():
        try:
            client.set(key, "1", ex=HEARTBEAT_TTL_S)
        except redis.RedisError:
            pass  # the broker is away; liveness will say so when the key expires
        _stop_heartbeat.wait(HEARTBEAT_EVERY_S)


@worker_ready.connect
def _start_heartbeat(sender: object = None, **_: object) -> None:
    ns = os.environ.get("GRIDFLEET_NAMESPACE", "gf")
    key = heartbeat_key(ns, os.environ.get("HOSTNAME") or socket.gethostname())
    threading.Thread(target=_heartbeat, args=(app.conf.broker_url, key), daemon=True, name="gridfleet-heartbeat").start()


@worker_shutdown.connect
def _stop(sender: object = None, **_: object) -> None:
    _stop_heartbeat.set()
