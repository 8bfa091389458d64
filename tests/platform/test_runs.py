"""Two runs of one fleet on one broker, one after the other: both trade, both end with exit 0,
and the second counts only itself (a real ``gridfleet run``, the embedded exchange, real Redis)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator import SimConfig, Simulator, assign_aggregators, generate_grid

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
GRIDFLEET = [sys.executable, "-m", "gridfleet.cli"]


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as exchange, RedisServer() as broker:
        yield exchange, broker


def one_run(tmp_path: Path, exchange_url: str, broker_url: str) -> tuple[int, dict, str]:
    """One simulation, one ``gridfleet run`` against it; (exit code, exchange summary, stderr)."""
    grid = generate_grid(200, houses_size=10, seed=3)
    assignment = assign_aggregators(grid, 4)
    fleet = {
        "exchange": {"url": exchange_url},
        "broker": {"url": broker_url},
        "aggregators": [{"name": n, "assets": e["assets"]} for n, e in assignment.items()],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    sim = Simulator(grid, exchange_url, SimConfig(slots=3, tick_interval=0.3, paused=True))
    sim.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDFLEET_")}
    proc = subprocess.Popen(
        [*GRIDFLEET, "run", "-c", str(path), "--workers", "1", "--metrics-port", "0"],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(sim.registry.owner) < 200:  # every asset selected by this run's ingress
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the fleet did not come up"
            time.sleep(0.1)
        time.sleep(1.0)  # workers and coordinator up
        sim.resume()
        assert sim.wait(120), "the simulation did not finish"
        _, err = proc.communicate(timeout=60)
        return proc.returncode, sim.report()["summary"], err
    finally:
        if proc.poll() is None:
            proc.kill()
        sim.stop()


def test_two_runs_in_a_row_on_one_broker_both_trade_and_exit_0(
    two_redis: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    exchange, broker = two_redis
    client = redis.Redis.from_url(broker.url)
    code1, first, err1 = one_run(tmp_path, exchange.url, broker.url)
    run1 = client.get("gf:run")
    trades1 = int(client.hget("gf:counters", "trades") or 0)
    code2, second, err2 = one_run(tmp_path, exchange.url, broker.url)
    run2 = client.get("gf:run")
    trades2 = int(client.hget("gf:counters", "trades") or 0)

    assert code1 == 0, err1
    assert code2 == 0, err2  # the first run's finish did not stop the second
    for summary in (first, second):
        # two traded slots x 10 rounds x 4 aggregators, each answered (or idle: nothing to trade)
        assert summary["on_time"] + summary["idle"] == 80, summary
        assert summary["missing"] == 0 and summary["late"] == 0, summary
    assert run1 and run2 and run1 != run2
    assert client.hget("gf:counters", "finished") == run2
    # the second run's counters are its own: the same grid and strategy trade about as much
    assert trades1 > 0 and 0 < trades2 < 1.5 * trades1
