"""The Celery app of gridfleet's workers (``gridfleet worker`` runs it).

Built from :func:`gridfleet.platform.celery_app.make_app`, the definition the ingress sends
with, and from :mod:`gridfleet.settings`: the broker (``GRIDFLEET_BROKER_URL``) is also where
shard inputs, results and strategy state live. ``gridfleet worker`` calls :func:`configure` with
its flags before it starts the worker; nothing is handed over through the environment.
"""

from __future__ import annotations

import contextlib

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from gridfleet.platform.celery_app import celery_settings, make_app
from gridfleet.settings import DEFAULT_BROKER_URL, get_settings, secret
from gridfleet.workers.heartbeat import Heartbeat, heartbeat_key, this_host


def _app_from_settings() -> Celery:
    settings = get_settings()
    return make_app(
        secret(settings.broker_url) or DEFAULT_BROKER_URL,
        task_events=settings.task_events,
        soft_shutdown_timeout=settings.worker_soft_shutdown_timeout,
        include=["gridfleet.workers.tasks"],
    )


app = _app_from_settings()
_heartbeat: Heartbeat | None = None
_namespace: str | None = None  # the fleet's; None: the fleet file of GRIDFLEET_CONFIG, if any


def configure(broker_url: str, *, task_events: bool, namespace: str) -> Celery:
    """Point this process's worker app at ``broker_url`` (the ``gridfleet worker`` flags) and
    name the fleet namespace its heartbeat is written under."""
    global _namespace
    app.conf.update(
        celery_settings(
            broker_url,
            task_events=task_events,
            soft_shutdown_timeout=get_settings().worker_soft_shutdown_timeout,
        )
    )
    _namespace = namespace
    return app


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
    with contextlib.suppress(Exception):  # a warm-up must never stop a worker from starting
        _evaluate_a_tiny_shard()
    from gridfleet.runtime.interpreter import warm_heap

    warm_heap(WARM_HEAP_MB)


WARM_HEAP_MB = 64
"""Heap each pool process faults in at start (a 12 500-asset shard's input alone is ~4 MB)."""

WARM_UP_TREE = (
    b'{"m": {"area_name": "Grid", "current_market_fee": 1, "children": {'
    b'"l": {"area_name": "Load", "asset_info": {"energy_requirement_kWh": 0.5}},'
    b'"p": {"area_name": "PV", "asset_info": {"available_energy_kWh": 0.5}}}}}'
)


def _evaluate_a_tiny_shard() -> None:
    """Parse, flatten, evaluate and validate a two-asset tree once: the first shard of a run
    then finds msgspec's decoders built and numpy's code paths warm (measured: 60 ms -> 2 ms)."""
    from gridfleet.platform.evaluate import evaluate_shard
    from gridfleet.platform.rounds import TreePart, flatten_parts
    from gridfleet.platform.shard import FleetSpec
    from gridfleet.strategies import registry
    from gridfleet.strategies.context import TickContext

    flat = flatten_parts([TreePart("warm-up", WARM_UP_TREE)], {})
    spec = FleetSpec(strategies=[], by_kind={"warm-up": [0, 0, 0, 0]})
    ctx = TickContext(
        market_slot="2024-01-01T00:00",
        next_market_slot="2024-01-01T00:15",
        tick_index=1,
        num_ticks=10,
        is_market_event=False,
        feed_in_tariff_rate=1.0,
        market_maker_rate=30.0,
        slot_length_s=900,
    )
    strategy = registry.build("linear_ramp", {})
    evaluate_shard(ctx, flat.assets, spec.strategy_indices(flat.assets), [strategy], {})  # type: ignore[list-item]


@worker_ready.connect
def _start_heartbeat(sender: object = None, **_: object) -> None:
    global _heartbeat
    from gridfleet.config import fleet_namespace

    ns = _namespace if _namespace is not None else fleet_namespace(get_settings().config)
    key = heartbeat_key(ns, this_host())
    _heartbeat = Heartbeat(str(app.conf.broker_url), key)
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(sender: object = None, **_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.halt.set()
