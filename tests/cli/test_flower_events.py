"""The fleet file's ``flower_events`` decides whether the workers ``gridfleet run`` starts send
task events (what Flower shows), watched on the broker's event channel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from gridfleet.platform.dispatch import QUEUE, ShardDispatcher
from tests.cli.helpers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _task_events_seen(broker_url: str, timeout: float = 60) -> bool:
    """Send shard tasks for a round that does not exist (each runs and ends at once) until the
    worker consumed one; then whether a task event was published meanwhile."""
    client = redis.Redis.from_url(broker_url)
    events = client.pubsub()
    events.psubscribe("*celeryev*")
    dispatcher = ShardDispatcher(broker_url)
    seen = consumed = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not client.keys("gf:alive:worker:*"):
            time.sleep(0.2)
        assert client.keys("gf:alive:worker:*"), "the worker gridfleet run started never came up"
        settle = None
        while time.monotonic() < deadline and not seen:
            if not consumed:
                dispatcher.send("gf", "no-such-round", 1, time.time() + 30)
            message = events.get_message(timeout=0.5)
            # Celery publishes task events on <db>.celeryev/task.* (worker.* are sent anyway).
            if (
                message
                and message["type"] == "pmessage"
                and b"celeryev/task." in message["channel"]
            ):
                seen = True
            if not consumed and client.llen(QUEUE) == 0:
                consumed, settle = True, time.monotonic() + 3
            if settle is not None and time.monotonic() > settle:
                break
        assert consumed, "the worker consumed no task"
        return seen
    finally:
        dispatcher.close()
        events.close()


@pytest.mark.parametrize("flower_events", [True, False])
def test_run_starts_workers_that_send_task_events_only_when_the_fleet_says_so(
    tmp_path: Path, redis_url: str, flower_events: bool
) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"flower_events: {str(flower_events).lower()}\naggregators:\n  - {{name: a, assets: [x]}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDFLEET_")}
    env |= {
        "PYTHONPATH": str(REPO),
        # The exchange side (ingress) waits for an exchange that never answers: only the worker
        # matters here.
        "GRIDFLEET_EXCHANGE_URL": redis_url,
        "GRIDFLEET_BROKER_URL": redis_url,
    }
    run = subprocess.Popen(
        [sys.executable, "-m", "gridfleet.cli", "run", "-c", str(fleet), "--workers", "1"],
        cwd=REPO,
        env={**env, "GRIDFLEET_METRICS_PORT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert _task_events_seen(redis_url) is flower_events
    finally:
        run.send_signal(signal.SIGTERM)  # gridfleet run stops its children, then ends
        run.wait(timeout=30)
