"""`gridfleet flower` on the broker shows the workers' shard tasks when task events are on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest

from gridfleet.platform.dispatch import ShardDispatcher
from gridfleet.runtime.redis_server import RedisServer, free_port
from tests.platform.harness import REPO, kill_group, start_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_flower_lists_shard_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDFLEET_TASK_EVENTS", "1")
    with RedisServer() as broker:
        workers = start_workers(broker.url, concurrency=1)
        port = free_port()
        env = {
            **os.environ,
            "GRIDFLEET_BROKER_URL": broker.url,
            "FLOWER_UNAUTHENTICATED_API": "true",
        }
        flower = subprocess.Popen(
            [sys.executable, "-m", "gridfleet.cli", "flower", "--port", str(port)],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        dispatcher = ShardDispatcher(broker.url)
        try:
            deadline = time.monotonic() + 60
            tasks: dict = {}
            while time.monotonic() < deadline:
                # A round that does not exist: the task runs, logs that its input is gone, ends.
                dispatcher.send("gf", "no-such-round", 1, time.time() + 30)
                time.sleep(1.0)
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/api/tasks", timeout=3
                    ) as resp:
                        tasks = orjson.loads(resp.read())
                except OSError:
                    continue
                if any(t.get("name") == "gridfleet.evaluate_shard" for t in tasks.values()):
                    break
            names = {t.get("name") for t in tasks.values()}
            assert "gridfleet.evaluate_shard" in names, tasks
            shard = next(t for t in tasks.values() if t.get("name") == "gridfleet.evaluate_shard")
            assert "no-such-round" in str(shard.get("args"))
        finally:
            dispatcher.close()
            kill_group(flower, signal.SIGTERM)
            kill_group(workers, signal.SIGTERM)
