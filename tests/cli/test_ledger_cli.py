"""``gridfleet runs``, ``export`` and ``ledger`` as a user types them: one line per mistake, the
documented exit code, no password, no traceback."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from gridfleet.ledger import store
from gridfleet.ledger.rows import to_rows

REPO = Path(__file__).resolve().parents[2]


def gridfleet(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDFLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "gridfleet.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_runs_and_export_read_the_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    engine = store.open_ledger(url)
    run = {"run_id": "20261207T120000Z-abcdef", "namespace": "gf", "started_at": 1.8e9,
           "started_by": "host", "finished_at": None}  # fmt: skip
    items = [["t1", "a1", "buy", 0.5, 15.0, 0.5, "o1", "spot", "2024-06-01T12:01:00+00:00"]]
    outcomes = [["agg", 3.5, 80.0, 2, 0, 0, "sent", True, "tx1"]]
    records = [
        ("1-0", {"kind": "trade", "aggregator": "agg", "slot": "2024-06-01T12:00", "items": items}),
        (
            "1-1",
            {
                "kind": "round",
                "round": "2024-06-01T12:00/0",
                "slot": "2024-06-01T12:00",
                "tick": 0,
                "aggregators": 1,
                "shards": 1,
                "hedged": 0,
                "commands": 2,
                "refused": 0,
                "strategy_errors": 0,
                "latency_ms": 80.0,
                "budget_ms": 900.0,
                "on_time": True,
                "outcomes": outcomes,
            },
        ),
        (
            "1-2",
            {
                "kind": "rejection",
                "aggregator": "agg",
                "transaction_id": "tx1",
                "rid": "answers-1",
                "items": [["a1", "offer", "energy above the available"]],
            },
        ),
    ]
    store.write(engine, run, to_rows(run["run_id"], records, 1.0))  # fmt: skip
    listed = gridfleet("runs", "--ledger-url", url)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert (
        line.startswith("20261207T120000Z-abcdef ") and "1 trades" in line and "0.500 kWh" in line
    )
    out = tmp_path / "t.csv"
    exported = gridfleet("export", run["run_id"], "--trades", str(out), "--ledger-url", url)
    assert exported.returncode == 0, exported.stderr
    (row,) = list(csv.DictReader(out.open()))
    assert (row["trade_id"], row["side"], row["energy_kwh"]) == ("t1", "buy", "0.5")
    rounds, rejected = tmp_path / "rounds.csv", tmp_path / "rejected.csv"
    both = gridfleet(
        "export", run["run_id"], "--rounds", str(rounds), "--rejections", str(rejected),
        "--ledger-url", url,
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    assert "1 aggregator rounds of run" in both.stderr and "1 rejected commands" in both.stderr
    (part,) = list(csv.DictReader(rounds.open()))
    assert (part["aggregator"], part["status"], part["batch_ms"], part["transaction_id"]) == (
        "agg", "sent", "80.0", "tx1",
    )  # fmt: skip
    (rej,) = list(csv.DictReader(rejected.open()))
    assert (rej["transaction_id"], rej["command"], rej["reason"]) == (
        "tx1", "offer", "energy above the available",
    )  # fmt: skip


def test_mistakes_are_one_line_with_the_documented_exit_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    cases = [
        (("export", "nope", "--trades", str(tmp_path / "x.csv"), "--ledger-url", url), 2, "no run 'nope'"),
        (("export", "nope", "--ledger-url", url), 2, "say what to export"),
        (("runs", "--ledger-url", "mysql://u:hunter2@h/db"), 3, "use sqlite:///PATH or postgresql://"),
        (("runs", "--ledger-url", "postgresql://u:hunter2@127.0.0.1:1/x"), 3, "u:***@127.0.0.1"),
        (("ledger", "--ledger-url", url), 2, "no broker"),
        (("ledger", "--broker-url", "redis://127.0.0.1:1/0", "--ledger-url", url), 3, "Redis"),
    ]  # fmt: skip
    for args, code, says in cases:
        done = gridfleet(*args)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert says in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout
    empty = gridfleet("runs", "--ledger-url", url)
    assert empty.returncode == 0 and "no runs in the ledger yet" in empty.stderr
