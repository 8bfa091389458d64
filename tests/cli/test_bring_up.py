"""Bringing a fleet up on an exchange, as a user sees it: the real ``gridfleet ingress`` against a
real Redis, with the embedded exchange or with no exchange at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gridfleet.simulator import SimConfig, Simulator, generate_grid
from tests.cli.helpers import assert_one_clear_error, gridfleet

pytestmark = pytest.mark.integration


def fleet_file(tmp_path: Path, url: str, body: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"exchange: {{url: {url}}}\nbroker: {{url: {url}}}\n{body}")
    return path


@pytest.fixture
def exchange(redis_url: str) -> Iterator[Simulator]:
    sim = Simulator(generate_grid(20, houses_size=5, seed=1), redis_url, SimConfig(paused=True))
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def test_no_exchange_on_the_redis_is_exit_3_with_a_hint(tmp_path: Path, redis_url: str) -> None:
    path = fleet_file(
        tmp_path,
        redis_url,
        'bring_up_timeout_s: 1\naggregators:\n  - {name: north, assets: ["H1 Load"]}\n',
    )
    message = assert_one_clear_error(
        gridfleet("ingress", "-c", str(path), "--metrics-port", "0"), 3
    )
    assert "did not answer the creation of 'north'" in message
    assert "--enable-external-connection" in message


def test_on_unselected_stop_names_what_could_not_be_selected(
    tmp_path: Path, redis_url: str, exchange: Simulator
) -> None:
    known = str(exchange.grid.asset_name[0])
    path = fleet_file(
        tmp_path,
        redis_url,
        "bring_up_timeout_s: 2\non_unselected: stop\naggregators:\n"
        f'  - {{name: north, assets: ["{known}", "No Such Load"]}}\n',
    )
    message = assert_one_clear_error(
        gridfleet("ingress", "-c", str(path), "--metrics-port", "0"), 1
    )
    assert "on_unselected: stop" in message
    assert "'No Such Load'" in message and "external strategy" in message
    assert known not in message.split("not selected:")[1]


def test_run_names_the_failing_process_and_its_last_error(tmp_path: Path, redis_url: str) -> None:
    """``gridfleet run`` supervises children; when one dies the terminal says which and why."""
    path = fleet_file(
        tmp_path,
        redis_url,
        'bring_up_timeout_s: 1\naggregators:\n  - {name: north, assets: ["H1 Load"]}\n',
    )
    outcome = gridfleet("run", "-c", str(path), "--workers", "0", "--metrics-port", "0")
    assert outcome.code == 3, outcome.stderr
    assert "Traceback" not in outcome.stderr
    line = next(x for x in outcome.stderr.splitlines() if "ingress exited with 3" in x)
    assert "did not answer the creation of 'north'" in line
