"""Worker-side Prometheus metrics, correct for Celery's prefork pool.

Shards run in the pool's forked children, each with counters of its own. prometheus_client's
multiprocess mode has every child write its values to files in ``PROMETHEUS_MULTIPROC_DIR``; the
worker's main process sums them (``MultiProcessCollector``) and serves ``/metrics`` on
``gridfleet worker --metrics-port``. The mode is chosen when prometheus_client is first imported,
so :func:`enable` runs before anything imports it; this module imports it only inside functions.

Without :func:`enable` (a worker started by ``celery`` directly, tests) the same metrics count in
the process and nobody serves them.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from gridfleet.platform.observers import Observer, ShardEvaluated

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class WorkerMetrics(Observer):
    """The shards a worker process evaluates, as Prometheus metrics."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        from gridfleet.runtime.metrics import LATENCY_BUCKETS

        # A registry of its own (not the global one): in multiprocess mode the values go to the
        # shared files whatever registry holds them, and several instances never clash.
        r = self.registry = CollectorRegistry()
        self.shards = Counter(
            "gridfleet_worker_shards_total", "Shards evaluated by this worker", registry=r
        )
        self.shard_duration = Histogram(
            "gridfleet_worker_shard_duration_seconds",
            "Time to load, evaluate and store one shard",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.assets = Counter(
            "gridfleet_worker_assets_evaluated_total",
            "Assets and markets whose strategies ran",
            registry=r,
        )
        self.commands = Counter(
            "gridfleet_worker_commands_total", "Commands the strategies produced", registry=r
        )
        self.refused = Counter(
            "gridfleet_worker_commands_refused_total",
            "Commands refused by outbound validation",
            registry=r,
        )
        self.strategy_errors = Counter(
            "gridfleet_worker_strategy_errors_total", "Strategy evaluations that raised", registry=r
        )

    def shard_evaluated(self, shard: ShardEvaluated) -> None:
        self.shards.inc()
        self.shard_duration.observe(shard.duration_s)
        self.assets.inc(shard.assets)
        self.commands.inc(shard.commands)
        self.refused.inc(shard.refused)
        self.strategy_errors.inc(shard.errors)


def enable(port: int, host: str = "0.0.0.0") -> Path:
    """Multiprocess mode for this worker, and ``/metrics`` on ``host:port`` once the pool is up.

    Call before the Celery app is imported. Uses ``PROMETHEUS_MULTIPROC_DIR`` when set (its old
    value files are removed: they belong to a previous run), a fresh temporary directory
    otherwise (removed when the worker exits). Returns the directory.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("worker metrics must be enabled before prometheus_client is imported")
    given = os.environ.get(MULTIPROC_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="gridfleet-worker-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    if not given:  # ours: gone with the main process (a pool child's exit must not remove it)
        main = os.getpid()

        def remove() -> None:
            if os.getpid() == main:
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(remove)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)

    from celery.signals import worker_process_shutdown, worker_ready

    def serve(**_: object) -> None:  # in the main process, after the pool forked
        _serve(path, port, host)

    def child_exit(pid: int | None = None, **_: object) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid(), str(path))

    worker_ready.connect(serve, weak=False)
    worker_process_shutdown.connect(child_exit, weak=False)
    return path


def _serve(path: Path, port: int, host: str) -> ThreadingHTTPServer:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from gridfleet.runtime.metrics import add_process_collectors, serve_registry

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    add_process_collectors(registry)  # the main process's (GC is not collected in this mode)
    server = serve_registry(lambda: generate_latest(registry), port, host)
    log.info("worker metrics on %s:%d/metrics (values from %s)", host, port, path)
    return server
