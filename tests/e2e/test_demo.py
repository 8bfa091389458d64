"""`gridfleet demo` as a newcomer runs it: a real subprocess, its own Redis servers and workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def demo_argv(report: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gridfleet.cli",
        "demo",
        "--headless",
        "--no-flower",
        "--assets",
        "400",
        "--aggregators",
        "4",
        "--slots",
        "2",
        "--tick-interval",
        "0.4",
        "--report",
        str(report),
        *extra,
    ]


def test_headless_demo_report_agrees_with_the_exchange(tmp_path: Path) -> None:
    run = subprocess.run(
        demo_argv(tmp_path / "run"), cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = orjson.loads((tmp_path / "run" / "report.json").read_bytes())
    exchange = orjson.loads((tmp_path / "run" / "exchange-report.json").read_bytes())
    summary = exchange["summary"]
    # The report's figures are the exchange's own counts, not the client's.
    assert report["assets"] == 400 and report["aggregators"] == 4
    assert (
        report["batches_expected"] == summary["aggregator_rounds"] == 40
    )  # 1 slot with trees x 10 rounds x 4
    assert report["batches_on_time"] == summary["on_time"]
    assert (
        report["batches_late"] == summary["late"]
        and report["batches_missing"] == summary["missing"]
    )
    assert report["latency_ms"]["p99"] == pytest.approx(summary["first_batch_ms"]["p99"])
    assert report["trades"] == exchange["meta"]["counts"]["trades"] > 0
    assert report["energy_traded_kwh"] == pytest.approx(
        exchange["meta"]["counts"]["energy_traded_kwh"]
    )
    assert report["commands_sent"] > 0 and report["hedged_shards"] >= 0
    assert report["batches_idle"] == summary["idle"]
    assert report["batches_on_time"] + report["batches_idle"] == 40, (
        "a small fleet on an idle machine is on time (or has nothing left to trade)"
    )
    assert (tmp_path / "run" / "report.html").stat().st_size > 10_000
    assert "report.html" in run.stdout
    # the run is in the ledger beside the run folder, trade for trade with the exchange
    from gridfleet.ledger import store

    (ledgered,) = store.list_runs(store.open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}"))
    assert ledgered.finished and ledgered.started_at is not None
    assert ledgered.trades == report["trades"]
    assert ledgered.energy_kwh == pytest.approx(report["energy_traded_kwh"])
    assert f"ledger: {tmp_path / 'ledger.sqlite'}" in run.stdout
    # and `gridfleet report RUN` rebuilds the demo's report from the ledger alone
    rebuilt_dir = tmp_path / "rebuilt"
    again = subprocess.run(
        [sys.executable, "-m", "gridfleet.cli", "report", ledgered.run_id, "--out",
         str(rebuilt_dir), "--ledger-url", f"sqlite:///{tmp_path / 'ledger.sqlite'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    rebuilt = orjson.loads((rebuilt_dir / "report.json").read_bytes())
    same = (
        "assets", "aggregators", "ticks", "batches_expected", "batches_on_time", "batches_late",
        "batches_missing", "batches_idle", "on_time_ratio", "latency_ms", "trades",
        "energy_traded_kwh", "commands_sent", "commands_rejected", "hedged_shards", "fee_revenue_ct",
    )  # fmt: skip
    assert {k: rebuilt[k] for k in same} == {k: report[k] for k in same}
    assert rebuilt["client"]["counters"] == report["client"]["counters"]
    assert rebuilt["client"]["rounds"] == report["client"]["rounds"]
    for table, keys in (
        ("per_slot", ("slot", "on_time", "commands", "fleet_trades", "trades", "fee_revenue_ct")),
        ("per_aggregator", ("uuid", "on_time", "trades", "finished")),
    ):
        pick = [{k: row[k] for k in keys} for row in report[table]]
        assert [{k: row[k] for k in keys} for row in rebuilt[table]] == pick, table
    for table in ("per_slot", "per_aggregator"):
        for mine, theirs in zip(rebuilt[table], report[table], strict=True):
            assert mine[
                "fleet_energy_kwh" if table == "per_slot" else "energy_kwh"
            ] == pytest.approx(theirs["fleet_energy_kwh" if table == "per_slot" else "energy_kwh"])
    assert (rebuilt_dir / "report.html").stat().st_size > 10_000


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_ctrl_c_stops_every_process_and_redis(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        demo_argv(tmp_path / "run", "--slots", "20"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        assert proc.stdout is not None
        for line in proc.stdout:
            if "fleet connected" in line or time.monotonic() > deadline:
                break
        time.sleep(2.0)  # mid-run: rounds are flowing
        seen = _descendants(proc.pid)
        names = " ".join(" ".join(p.cmdline()) for p in seen)
        assert (
            "redis-server" in names
            and "worker" in names
            and "ingress" in names
            and "coordinator" in names
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    alive = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    # Nothing left listening for the run either: no redis-server child of ours survives.
    assert not [p for p in psutil.process_iter(["ppid", "name"]) if p.info["ppid"] == proc.pid]
    assert os.path.exists(tmp_path / "run" / "fleet.yaml")


def test_demo_rest_transport_wires_the_exchange_side(tmp_path: Path, redis_url: str) -> None:
    """`--transport rest`: the exchange serves its REST door for a user made up per run, the
    fleet file names the door and the credentials' env vars, and the password is only in the
    env the fleet's processes get (the client side, gridfleet/exchange/rest.py, is not here)."""
    import httpx
    import yaml

    from gridfleet.demo.stack import REST_PASSWORD_ENV, REST_USERNAME_ENV, DemoOptions, DemoStack

    stack = DemoStack(
        DemoOptions(assets=40, aggregators=2, transport="rest", report_dir=tmp_path / "run")
    )
    try:
        sim = stack.start_exchange(redis_url)
        fleet_file = stack.write_fleet_file(redis_url, redis_url)
        text = fleet_file.read_text()
        rest = yaml.safe_load(text)["exchange"]["rest"]
        assert rest["domain"] == sim.rest_url and rest["websocket"] == sim.rest_ws_url
        assert rest["simulation_id"] == sim.simulation_id == stack.simulation_id
        assert rest["username_env"] == REST_USERNAME_ENV
        assert rest["password_env"] == REST_PASSWORD_ENV
        env = stack.fleet_env()
        assert env[REST_PASSWORD_ENV] not in text
        login = httpx.post(
            f"{sim.rest_url}/api-token-auth/",
            json={"username": env[REST_USERNAME_ENV], "password": env[REST_PASSWORD_ENV]},
        )
        assert login.status_code == 200 and login.json()["access"]
        assert sim.paused  # until the fleet is up, as over Redis
    finally:
        stack.stop()


def test_demo_with_settlement_reports_what_was_settled_apart_from_spot(tmp_path: Path) -> None:
    run = subprocess.run(
        demo_argv(tmp_path / "run", "--slots", "3", "--settlement"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = orjson.loads((tmp_path / "run" / "report.json").read_bytes())
    counts = orjson.loads((tmp_path / "run" / "exchange-report.json").read_bytes())["meta"][
        "counts"
    ]
    settled = report["settlement"]
    assert counts["settlement_markets"] is True
    assert settled["trades"] == counts["settlement_trades"] > 0
    assert settled["energy_kwh"] == pytest.approx(counts["settlement_energy_kwh"])
    assert report["trades"] == counts["trades"] > 0  # spot, settlement apart
    # the fleet saw both sides of each settlement trade it was part of, told apart by order id
    assert 0 < settled["fleet_trades"] <= 2 * settled["trades"]
    assert settled["deviation_kwh"] > settled["unsettled_kwh"] >= 0
    assert report["batches_on_time"] + report["batches_idle"] == report["batches_expected"]
    assert "settled after the slot" in (tmp_path / "run" / "report.html").read_text()
    assert "settlement trades / energy settled" in run.stdout
