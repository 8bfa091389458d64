"""The Celery app of gridfleet's workers (``gridfleet worker`` runs it).

The broker URL comes from ``GRIDFLEET_BROKER_URL``; it is also where shard inputs, results and
strategy state live. Task events (for Flower) are on when ``GRIDFLEET_TASK_EVENTS=1``.
"""

from __future__ import annotations

import contextlib
import os
import socket

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from gridfleet.workers.heartbeat import Heartbeat, heartbeat_key
from gridfleet.workers.settings import celery_settings

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def broker_url() -> str:
    return os.environ.get("GRIDFLEET_BROKER_URL", DEFAULT_BROKER)


def make_app(url: str | None = None, *, task_events: bool | None = None) -> Celery:
    if task_events is None:
        task_events = os.environ.get("GRIDFLEET_TASK_EVENTS", "0") == "1"
    soft_shutdown = float(os.environ.get("GRIDFLEET_WORKER_SOFT_SHUTDOWN_TIMEOUT", "10"))
    app = Celery("gridfleet", include=["gridfleet.workers.tasks"])
    app.conf.update(
        celery_settings(
            url or broker_url(), task_events=task_events, soft_shutdown_timeout=soft_shutdown
        )
    )
    return app


app = make_app()
_heartbeat: Heartbeat | None = None


@worker_process_init.connect
def _warm_up(**_: object) -> None:
    """Import what a shard needs before the first one arrives: the first round of a run must not
    pay for module loading in every pool process."""
    import gridfleet.platform.shard
    import gridfleet.strategies.builtin  # noqa: F401
    from gridfleet.strategies import registry

    for name in registry.names():
        with contextlib.suppress(Exception):  # a user strategy may need parameters; it loads later
            registry.get(name)


@worker_ready.connect
def _start_heartbeat(sender: object = None, **_: object) -> None:
    global _heartbeat
    ns = os.environ.get("GRIDFLEET_NAMESPACE", "gf")
    key = heartbeat_key(ns, os.environ.get("HOSTNAME") or socket.gethostname())
    _heartbeat = Heartbeat(str(app.conf.broker_url), key)
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(sender: object = None, **_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.halt.set()
