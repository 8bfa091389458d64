"""Running the exchange on its own (what ``gridfleet sim`` does around :class:`Simulator`):
parsing its durations and dates, building the grid, the final report and its summary line.

Errors are :class:`ValueError` / :class:`~gridfleet.simulator.grid.GridError` with a message
meant for the user; the click command turns them into usage errors (exit 2).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gridfleet.runtime.redact import redact
from gridfleet.simulator.grid import Grid, generate_grid, load_grid_file
from gridfleet.simulator.runner import Simulator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hour)?\s*$")


def parse_duration(text: str) -> timedelta:
    """``15min``, ``900s``, ``1h``, ``15`` (minutes) -> timedelta; ValueError otherwise."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r}: use a number with s, min or h, e.g. 15min")
    value = float(m.group(1))
    unit = (m.group(2) or "min")[0]
    seconds = value * {"s": 1, "m": 60, "h": 3600}[unit]
    if seconds < 60:
        raise ValueError(f"{text!r}: a slot must last at least 1 min")
    return timedelta(seconds=seconds)


def parse_start(text: str) -> datetime:
    """An ISO date or date-time -> datetime; ValueError naming the expected form otherwise."""
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{text!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from exc


def build_grid(
    grid_file: str | None, assets: int | None, markets: int | None, houses_size: int, seed: int
) -> Grid:
    """The grid of a run: loaded from ``grid_file``, else generated with ``assets`` assets.
    Exactly one of the two must be given (the caller checks); GridError on a bad file."""
    if grid_file:
        return load_grid_file(grid_file, seed=seed)
    if not assets:
        raise ValueError("a grid needs a grid file or a number of assets")
    return generate_grid(assets, communities=markets, houses_size=houses_size, seed=seed)


def final_report(simulator: Simulator, command: str, report_path: str | None) -> dict[str, Any]:
    """The deadline report with when and by what command it was written (passwords
    redacted); saved to ``report_path`` when given."""
    report: dict[str, Any] = simulator.report()
    report["meta"]["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["meta"]["command"] = redact(command)
    if report_path:
        Path(report_path).write_text(json.dumps(report, indent=1))
    return report


def summary_line(report: dict[str, Any], report_path: str | None) -> str:
    """One line for the terminal: what the run did, how on time the batches were, and the
    rounds the exchange could not deliver (its Redis was down), per gap."""
    s = report["summary"]
    c = report["meta"]["counts"]
    gaps = s.get("gaps", [])
    undelivered = ""
    if gaps:
        spans = ", ".join(
            f"{g['first_round'] or '?'} .. {g['last_round'] or '?'}"
            + (f" ({g['seconds']:.1f} s)" if g["seconds"] is not None else " (never back)")
            for g in gaps
        )
        undelivered = (
            f"; undelivered {s['undelivered_rounds']} rounds in {len(gaps)} gap(s): {spans}"
        )
    settled = ""
    if c.get("settlement_markets"):
        settled = (
            f"; settled {c['settlement_trades']} trades, {c['settlement_energy_kwh']:.3f} kWh of "
            f"{c['settlement_deviation_kwh']:.3f} kWh deviation"
        )
    return (
        f"done: {c['rounds']} rounds, {c['events_sent']} events, {c['batches_received']} batches, "
        f"{c['trades']} trades, {c['energy_traded_kwh']:.3f} kWh{settled}; on time {s['on_time']}, late {s['late']}, "
        f"missing {s['missing']}, idle {s.get('idle', 0)}"
        + undelivered
        + (f"; report -> {report_path}" if report_path else "")
    )
