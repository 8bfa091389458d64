"""The run report of a fleet run: ``report.json`` and a self-contained ``report.html``.

>>> path = write_report(out_dir, sim_report=sim.report(), records=records,
...                     counters=counters, meta=meta, market_stats=rec.market_stats,
...                     slot_totals=rec.slot_totals)
"""

from __future__ import annotations

from gridfleet.report.model import build_report
from gridfleet.report.simstats import SimStatsRecorder, market_stats_from_simulator
from gridfleet.report.writer import write_report

__all__ = ["SimStatsRecorder", "build_report", "market_stats_from_simulator", "write_report"]
