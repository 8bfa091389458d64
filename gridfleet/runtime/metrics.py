"""Prometheus metrics of ingress and coordinator, and the ``/healthz`` they serve beside them.

Conventions: durations are ``..._duration_seconds`` histograms, counters end in ``_total``,
units are in the names, and labels take values from a fixed set only (event kind, deadline
outcome, skip and loss reasons). Nothing is labelled by aggregator or asset: a fleet has hundreds
of them, and their detail is in the logs and the broker's records. Every registry also carries
the process's own metrics (``process_*``, ``python_info``, ``python_gc_*``).

``/healthz`` answers 200 only while the process's main loop has beaten within ``stale_after_s``
(it is a liveness check of the loop, not of the HTTP thread), 503 otherwise. The workers'
metrics are in :mod:`gridfleet.workers.metrics`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.6,
    0.75,
    1.0,
    1.5,
    2.0,
    5.0,
)

SKIP_REASONS = ("unusable", "superseded", "past_deadline", "fenced")
LOSS_REASONS = ("broker", "coordinator", "exchange")
GAP_CAUSES = ("exchange", "broker")
DEADLINE_OUTCOMES = ("hit", "miss")

__all__ = ["LATENCY_BUCKETS", "Metrics", "add_process_collectors", "serve_registry"]


def add_process_collectors(registry: CollectorRegistry) -> None:
    """The process's own metrics (CPU, memory, file descriptors, GC, Python version)."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class Metrics:
    """The metrics of one ingress or coordinator process, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        add_process_collectors(r)
        # -- ingress
        self.events = Counter(
            "gridfleet_events_total", "Exchange events received, by kind", ["kind"], registry=r
        )
        self.bad_events = Counter(
            "gridfleet_bad_events_total",
            "Events that could not be parsed, and trees a worker could not read",
            registry=r,
        )
        self.stale_events = Counter(
            "gridfleet_stale_events_total",
            "Events skipped unparsed because a newer round had arrived",
            registry=r,
        )
        self.rounds = Counter("gridfleet_rounds_total", "Event rounds dispatched", registry=r)
        self.skipped_rounds = Counter(
            "gridfleet_skipped_rounds_total",
            "Rounds not answered on purpose, by reason (unusable, superseded, past_deadline, fenced)",
            ["reason"],
            registry=r,
        )
        self.lost_rounds = Counter(
            "gridfleet_lost_rounds_total",
            "Rounds lost, by reason (broker: unreachable at ingress; coordinator)",
            ["reason"],
            registry=r,
        )
        self.shards = Counter("gridfleet_shards_total", "Shard tasks sent", registry=r)
        self.queue_depth = Gauge(
            "gridfleet_queue_depth", "Shard tasks waiting in the broker queue", registry=r
        )
        self.trades = Counter(
            "gridfleet_trades_total", "Trades the exchange reported to the fleet", registry=r
        )
        self.energy_traded = Counter(
            "gridfleet_energy_traded_kwh_total", "Energy traded by the fleet, in kWh", registry=r
        )
        self.settlement_trades = Counter(
            "gridfleet_settlement_trades_total",
            "Settlement-market trades the exchange reported to the fleet (not in trades_total)",
            registry=r,
        )
        self.settlement_energy = Counter(
            "gridfleet_settlement_energy_kwh_total",
            "Energy the fleet settled in settlement markets, in kWh",
            registry=r,
        )
        self.lost_records = Counter(
            "gridfleet_lost_records_total",
            "Trade and finish records not written (broker unreachable)",
            registry=r,
        )
        self.broker_outages = Counter(
            "gridfleet_broker_outages_total", "Times the broker became unreachable", registry=r
        )
        # -- coordinator
        self.event_to_batch = Histogram(
            "gridfleet_event_to_batch_duration_seconds",
            "First event of a round to its batches published, per round",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.deadline = Counter(
            "gridfleet_deadline_total", "Rounds by deadline outcome", ["outcome"], registry=r
        )
        self.batches = Counter(
            "gridfleet_batches_total",
            "Batches published (one per aggregator and round)",
            registry=r,
        )
        self.hedged = Counter(
            "gridfleet_hedged_shards_total", "Shards the coordinator evaluated itself", registry=r
        )
        self.shard_duration = Histogram(
            "gridfleet_shard_duration_seconds",
            "Evaluation time of the shards a round was answered with",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commands_sent = Counter(
            "gridfleet_commands_sent_total", "Commands published to the exchange", registry=r
        )
        self.commands_refused = Counter(
            "gridfleet_commands_refused_total",
            "Commands refused by outbound validation",
            registry=r,
        )
        self.commands_rejected = Counter(
            "gridfleet_commands_rejected_total",
            "Commands the exchange answered with an error",
            registry=r,
        )
        self.strategy_errors = Counter(
            "gridfleet_strategy_errors_total", "Strategy evaluations that raised", registry=r
        )
        self.broker_errors = Counter(
            "gridfleet_broker_errors_total", "Broker calls that failed and were retried", registry=r
        )
        # -- both
        self.reconnects = Counter(
            "gridfleet_reconnects_total", "Redis reconnects of pub/sub readers", registry=r
        )
        self.gaps = Counter(
            "gridfleet_gaps_total",
            "Outages ingress saw end, by cause (exchange: no events; broker: unreachable)",
            ["cause"],
            registry=r,
        )
        self.gap_rounds = Counter(
            "gridfleet_gap_rounds_total",
            "Rounds missed during outages, by cause (exchange: no events; broker: unreachable)",
            ["cause"],
            registry=r,
        )
        # Every label value exists from the start, at 0: a rate() over a series that appears
        # only with its first increment misses that increment.
        for reason in SKIP_REASONS:
            self.skipped_rounds.labels(reason)
        for reason in LOSS_REASONS:
            self.lost_rounds.labels(reason)
        for outcome in DEADLINE_OUTCOMES:
            self.deadline.labels(outcome)
        for cause in GAP_CAUSES:
            self.gaps.labels(cause)
            self.gap_rounds.labels(cause)
        self._beat = time.monotonic()

    def beat(self) -> None:
        """The main loop is alive."""
        self._beat = time.monotonic()

    def seconds_since_beat(self) -> float:
        return time.monotonic() - self._beat

    def serve(
        self, port: int, host: str = "0.0.0.0", stale_after_s: float = 15.0
    ) -> ThreadingHTTPServer:
        """``/metrics`` and ``/healthz`` on ``host:port``, from a daemon thread."""

        def healthz() -> tuple[bool, str]:
            age = self.seconds_since_beat()
            ok = age <= stale_after_s
            return ok, f"{'ok' if ok else 'stale'}: main loop beat {age:.1f} s ago\n"

        return serve_registry(lambda: generate_latest(self.registry), port, host, healthz)


def serve_registry(
    render: Callable[[], bytes],
    port: int,
    host: str = "0.0.0.0",
    healthz: Callable[[], tuple[bool, str]] | None = None,
) -> ThreadingHTTPServer:
    """Serve ``render()`` on ``/metrics`` (and ``healthz()`` on ``/healthz``) from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, code, ctype = render(), 200, CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz") and healthz is not None:
                ok, text = healthz()
                body, code, ctype = text.encode(), (200 if ok else 503), "text/plain"
            else:
                body, code, ctype = b"not found\n", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics-http").start()
    return server
