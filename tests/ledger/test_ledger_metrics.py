"""The ledger writer's /metrics and /healthz (gridfleet.ledger.metrics), without Redis."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner

from gridfleet.ledger.metrics import serve
from gridfleet.ledger.writer import WriterStats
from gridfleet.runtime.redis_server import free_port


@dataclass
class FakeWriter:
    stats: WriterStats = field(default_factory=WriterStats)
    last_beat: float = field(default_factory=time.monotonic)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def endpoint() -> Iterator[tuple[FakeWriter, str]]:
    writer = FakeWriter()
    port = free_port()
    server = serve(writer, port, host="127.0.0.1", stale_after_s=5.0)
    try:
        yield writer, f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_are_the_writer_stats_at_scrape_time(endpoint: tuple[FakeWriter, str]) -> None:
    writer, base = endpoint
    status, text = _get(f"{base}/metrics")
    assert status == 200
    first = _samples(text)
    assert first["gridfleet_ledger_entries_total"] == 0
    assert "# TYPE gridfleet_ledger_entries_total counter" in text
    assert "# TYPE gridfleet_ledger_lag_seconds gauge" in text
    assert "python_info" in text  # the process's own metrics, as on the other endpoints

    writer.stats.entries, writer.stats.rows, writer.stats.bad_records = 120, 250, 3
    writer.stats.last_lag_s, writer.stats.max_lag_s = 0.25, 1.5
    status, text = _get(f"{base}/metrics")
    samples = _samples(text)
    assert samples["gridfleet_ledger_entries_total"] == 120
    assert samples["gridfleet_ledger_rows_total"] == 250
    assert samples["gridfleet_ledger_bad_records_total"] == 3
    assert samples["gridfleet_ledger_lag_seconds"] == 0.25
    assert samples["gridfleet_ledger_max_lag_seconds"] == 1.5


def test_healthz_is_200_while_the_loop_beats_then_503(endpoint: tuple[FakeWriter, str]) -> None:
    writer, base = endpoint
    status, text = _get(f"{base}/healthz")
    assert status == 200 and text.startswith("ok")
    writer.last_beat = time.monotonic() - 60  # no beat for a minute: stuck
    status, text = _get(f"{base}/healthz")
    assert status == 503 and text.startswith("stale")
    writer.last_beat = time.monotonic()
    assert _get(f"{base}/healthz")[0] == 200
    assert _get(f"{base}/other")[0] == 404


def test_metrics_port_is_checked_by_click() -> None:
    from gridfleet.cli.ledger import ledger

    result = CliRunner().invoke(ledger, ["--metrics-port", "70000"])
    assert result.exit_code == 2
    assert "--metrics-port" in result.output and "70000" in result.output


def test_a_port_in_use_raises_oserror() -> None:
    """`gridfleet ledger` turns this into a one-line error naming --metrics-port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            serve(FakeWriter(), taken.getsockname()[1], host="127.0.0.1")
