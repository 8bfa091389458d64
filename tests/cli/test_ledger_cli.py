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
    store.write(engine, run, to_rows(run["run_id"], [("1-0", {"kind": "trade", "aggregator": "agg", "slot": "2024-06-01T12:00", "items": items})], 1.0))  # fmt: skip
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


def test_mistakes_are_one_line_with_the_documented_exit_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    cases = [
        (("export", "nope", "--trades", str(tmp_path / "x.csv"), "--ledger-url", url), 2, "no run 'nope'"),
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
