"""A user's mistake on the command line ends in exit code 2 or 3 and one clear message on
stderr, never a traceback or a silent exit (the real CLI, as a subprocess)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import redis

from tests.cli.helpers import REPO, assert_one_clear_error, gridfleet

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def fleet_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(body)
    return path


def test_run_lists_every_bad_strategy_with_its_field_path_before_starting(
    tmp_path: Path,
) -> None:
    path = fleet_file(
        tmp_path,
        """
exchange: {url: redis://127.0.0.1:1/0}
broker: {url: redis://127.0.0.1:1/0}
aggregators:
  - name: north
    assets: ["H1 Load"]
    strategy: {name: no_such_strategy}
    by_kind:
      storage: {name: fixed_rate, params: {bid_rate: "cheap"}}
  - name: dso
    markets: [Grid]
    market_strategy: {name: grid_fee_tou, params: {path: data/missing-ToU.csv}}
""",
    )
    # Unreachable URLs: the fleet must be refused before anything connects or starts.
    message = assert_one_clear_error(gridfleet("run", "-c", str(path)), 2)
    assert "3 problem(s)" in message
    assert "aggregators.0.strategy.name: unknown strategy 'no_such_strategy'" in message
    assert "aggregators.0.by_kind.storage.params.bid_rate:" in message
    assert "aggregators.1.market_strategy.params.path:" in message
    assert "missing-ToU.csv: file not found" in message
    assert "cannot reach" not in message


def test_one_bad_data_file_is_one_line(tmp_path: Path) -> None:
    path = fleet_file(
        tmp_path,
        """
aggregators:
  - name: dso
    markets: [Grid]
    market_strategy: {name: grid_fee_tou, params: {path: ToU.csv}}
""",
    )
    message = assert_one_clear_error(gridfleet("run", "-c", str(path)), 2)
    assert len(message.splitlines()) == 1, message
    assert "aggregators.0.market_strategy.params.path:" in message and "file not found" in message


def test_single_process_with_a_glob_and_no_grid_file_is_refused_at_validation(
    tmp_path: Path,
) -> None:
    path = fleet_file(
        tmp_path,
        """
exchange: {url: redis://127.0.0.1:1/0}
aggregators:
  - name: everything
    assets: ["*"]
""",
    )
    message = assert_one_clear_error(gridfleet("run", "--single-process", "-c", str(path)), 2)
    assert "aggregators.0:" in message and "needs `grid_file`" in message
    assert len(message.splitlines()) == 1, message


@pytest.mark.integration
def test_ingress_refuses_an_unknown_strategy_in_one_message(tmp_path: Path, redis_url: str) -> None:
    path = fleet_file(
        tmp_path,
        "aggregators:\n  - {name: a, assets: [x], strategy: {name: nope}}\n",
    )
    env = {"GRIDFLEET_EXCHANGE_URL": redis_url, "GRIDFLEET_BROKER_URL": redis_url}
    outcome = gridfleet("ingress", "-c", str(path), "--metrics-port", "0", env=env)
    message = assert_one_clear_error(outcome, 2)
    assert "aggregators.0.strategy.name: unknown strategy 'nope'" in message
    assert len(message.splitlines()) == 1, message


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("run",), 2, "no fleet file"),
        (("run", "-c", "/nonexistent/fleet.yaml"), 2, "cannot read fleet file"),
        (("ingress", "-c", "{fleet}", "--partition", "3/2"), 2, "--partition"),
        (("run", "-c", "{fleet}", "--exchange-url", "http://x"), 2, "not a Redis URL"),
        (("run", "-c", "{fleet}", "--exchange-url", UNREACHABLE), 3, "cannot reach Redis"),
        (("worker", "--broker-url", UNREACHABLE), 3, "cannot reach Redis"),
        (
            ("worker", "--broker-url", UNREACHABLE, "--config", "/nonexistent.yaml"),
            2,
            "cannot read",
        ),
        (("flower", "--broker-url", UNREACHABLE, "--basic-auth", "nocolon"), 2, "user:password"),
        (("health", "worker", "--broker-url", "not-a-url"), 2, "not a Redis URL"),
        (("health", "worker", "--broker-url", UNREACHABLE), 3, "unreachable"),
        (("run", "-c", "{fleet}", "--workers", "-1"), 2, "--workers"),
    ],
)
def test_user_mistakes_get_a_clear_message_and_the_documented_code(
    tmp_path: Path, args: tuple[str, ...], code: int, says: str
) -> None:
    path = fleet_file(tmp_path, "aggregators:\n  - {name: a, assets: [x]}\n")
    argv = [a.replace("{fleet}", str(path)) for a in args]
    env = {"GRIDFLEET_BROKER_URL": UNREACHABLE}
    message = assert_one_clear_error(gridfleet(*argv, env=env), code)
    assert says in message


def test_a_bad_environment_variable_is_named_without_its_value(tmp_path: Path) -> None:
    env = {"GRIDFLEET_METRICS_PORT": "ninety-one-hundred", "GRIDFLEET_EXCHANGE_URL": UNREACHABLE}
    path = fleet_file(tmp_path, "aggregators:\n  - {name: a, assets: [x]}\n")
    message = assert_one_clear_error(gridfleet("coordinator", "-c", str(path), env=env), 2)
    assert "GRIDFLEET_METRICS_PORT" in message and "ninety-one-hundred" not in message


def test_a_password_in_a_url_never_reaches_the_terminal() -> None:
    env = {"GRIDFLEET_BROKER_URL": "redis://:hunter2@127.0.0.1:1/0"}
    for args in (("health", "worker"), ("worker",), ("flower",)):
        outcome = gridfleet(*args, env=env)
        message = assert_one_clear_error(outcome, 3)
        assert "hunter2" not in message + outcome.stdout, args


@pytest.mark.integration
def test_health_worker_reads_the_namespace_from_the_fleet_file(
    tmp_path: Path, redis_url: str
) -> None:
    path = fleet_file(tmp_path, "namespace: blue\naggregators:\n  - {name: a, assets: [x]}\n")
    redis.Redis.from_url(redis_url).set("blue:alive:worker:pod-7", "1", ex=30)
    env = {"GRIDFLEET_BROKER_URL": redis_url}
    assert gridfleet("health", "worker", "-c", str(path), "--hostname", "pod-7", env=env).code == 0
    with_env = gridfleet(
        "health", "worker", "--hostname", "pod-7", env={**env, "GRIDFLEET_CONFIG": str(path)}
    )
    assert with_env.code == 0, with_env.stderr
    # Without a fleet file: the default namespace, where this worker wrote nothing.
    outcome = gridfleet("health", "worker", "--hostname", "pod-7", env=env)
    assert_one_clear_error(outcome, 1)
    assert "no heartbeat from worker pod-7" in outcome.stderr


def test_health_worker_is_light() -> None:
    """The probe runs every few seconds: no numpy, no simulator, no demo, no Celery."""
    script = (
        "import json, sys\n"
        "from gridfleet.cli import cli\n"
        "try:\n"
        f"    cli.main(['health', 'worker', '--broker-url', {UNREACHABLE!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ['numpy', 'gridfleet.simulator', 'gridfleet.cli.demo', 'gridfleet.cli.sim',\n"
        "         'celery', 'gridfleet.platform', 'matplotlib']\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "unreachable" in done.stderr, done.stderr  # the probe really ran
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
