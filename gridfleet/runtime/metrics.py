"""Prometheus metrics of ingress and coordinator, and the ``/healthz`` they serve beside them.

``/healthz`` answers 200 only while the process's main loop has beaten within ``stale_after_s``
(it is a liveness check of the loop, not of the HTTP thread), 503 otherwise.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "gridfleet_events_total", "Exchange events received, by kind", ["kind"], registry=r
        )
        self.bad_events = Counter(
            "gridfleet_bad_events_total", "Events that could not be parsed", registry=r
        )
        self.rounds = Counter("gridfleet_rounds_total", "Event rounds dispatched", registry=r)
        self.skipped_rounds = Counter(
            "gridfleet_skipped_rounds_total", "Rounds skipped, by reason", ["reason"], registry=r
        )
        self.shards = Counter("gridfleet_shards_total", "Shard tasks sent", registry=r)
        self.queue_depth = Gauge(
            "gridfleet_queue_depth", "Shard tasks waiting in the broker queue", registry=r
        )
        self.latency = Histogram(
            "gridfleet_event_to_batch_seconds",
            "First event of a round to its batches published",
            ["aggregator"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.deadline = Counter(
            "gridfleet_deadline_total", "Rounds by deadline outcome", ["outcome"], registry=r
        )
        self.hedged = Counter(
            "gridfleet_hedged_shards_total", "Shards the coordinator evaluated itself", registry=r
        )
        self.shard_seconds = Histogram(
            "gridfleet_shard_seconds", "Shard evaluation time", buckets=LATENCY_BUCKETS, registry=r
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
        self.reconnects = Counter(
            "gridfleet_reconnects_total", "Redis reconnects of pub/sub readers", registry=r
        )
        self._beat = time.monotonic()

    def beat(self) -> None:
        """The main loop is alive."""
        self._beat = time.monotonic()

    def seconds_since_beat(self) -> float:
        return time.monotonic() - self._beat

    def serve(
        self, port: int, host: str = "0.0.0.0", stale_after_s: float = 15.0
    ) -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, code, ctype = generate_latest(metrics.registry), 200, CONTENT_TYPE_LATEST
                elif self.path.startswith("/healthz"):
                    age = metrics.seconds_since_beat()
                    ok = age <= stale_after_s
                    body = f"{'ok' if ok else 'stale'}: main loop beat {age:.1f} s ago\n".encode()
                    code, ctype = (200 if ok else 503), "text/plain"
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
