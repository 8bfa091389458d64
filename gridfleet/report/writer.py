"""Write ``report.json`` and ``report.html`` into a directory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from gridfleet.report import plots
from gridfleet.report.model import build_report
from gridfleet.report.page import render


def write_report(
    out_dir: Path,
    *,
    sim_report: Mapping[str, Any],
    records: list[Mapping[str, Any]],
    counters: Mapping[str, Any],
    meta: Mapping[str, Any],
    market_stats: list[Mapping[str, Any]] | None = None,
    slot_totals: list[Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``report.json`` and ``report.html`` (plots embedded) into ``out_dir``, creating
    it; returns the path of ``report.html``. Inputs are described in :mod:`.model`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = build_report(
        sim_report=sim_report,
        records=records,
        counters=counters,
        meta=meta,
        market_stats=market_stats,
        slot_totals=slot_totals,
    )
    _atomic(
        out_dir / "report.json",
        orjson.dumps(rep, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n",
    )
    pngs = {
        "latency": plots.latency_per_tick(rep["per_tick"]),
        "on_time": plots.on_time_per_tick(rep["per_tick"]),
        "energy": plots.energy_per_slot(rep["per_slot"]),
        "fees": plots.fees_per_market(rep["per_market"]),
    }
    html = out_dir / "report.html"
    _atomic(html, render(rep, pngs).encode("utf-8"))
    return html


def _atomic(path: Path, data: bytes) -> None:
    # a reader (or a Ctrl-C) never sees half a report
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
