"""report.json content: every figure comes from the inputs and is checked by value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gridfleet.report import build_report, write_report
from gridfleet.report.model import attribute_trades
from tests.report import fixtures as fx

REQUIRED = (
    "assets", "aggregators", "ticks", "batches_expected", "batches_on_time", "batches_late",
    "batches_missing", "latency_ms", "commands_sent", "commands_rejected", "hedged_shards",
    "trades", "energy_traded_kwh", "on_time_ratio", "meta", "per_tick", "per_slot", "per_market",
)  # fmt: skip


@pytest.fixture
def rep() -> dict[str, Any]:
    return build_report(**fx.inputs())


def test_headline_figures_come_from_the_exchange_and_the_counters(rep: dict[str, Any]) -> None:
    assert set(REQUIRED) <= set(rep)
    assert rep["assets"] == 40 and rep["aggregators"] == 2
    assert rep["ticks"] == 4
    assert (rep["batches_expected"], rep["batches_on_time"]) == (8, 5)
    assert (rep["batches_late"], rep["batches_missing"]) == (1, 2)
    assert rep["on_time_ratio"] == 0.625
    assert rep["latency_ms"] == {"p50": 120.0, "p95": 700.0, "p99": 700.0, "max": 700.0}
    assert rep["deadline_ms"] == 500.0
    # counters arrive as strings from Redis
    assert (rep["commands_sent"], rep["commands_rejected"], rep["commands_refused"]) == (120, 1, 2)
    assert rep["hedged_shards"] == 3
    # trades and energy are the exchange's, not the fleet's (which sees each side)
    assert (rep["trades"], rep["energy_traded_kwh"]) == (7, 3.5)
    assert rep["client"]["counters"]["trades"] == 6
    assert rep["client"]["counters"]["energy_traded_kwh"] == 3.5
    assert rep["fee_revenue_ct"] == 5.0
    assert rep["meta"] == fx.meta()


def test_client_side_view_is_kept_apart(rep: dict[str, Any]) -> None:
    c = rep["client"]
    assert c["rounds"] == 4 and c["rounds_on_time"] == 4
    # nearest rank over [45, 90, 110, 190], as the exchange computes its percentiles
    assert c["latency_ms"] == {"p50": 90.0, "p95": 190.0, "p99": 190.0, "max": 190.0}
    assert rep["exchange"]["batches_received"] == 6


def test_per_tick_joins_the_exchange_and_the_coordinator(rep: dict[str, Any]) -> None:
    ticks = rep["per_tick"]
    assert [(t["slot"], t["tick"]) for t in ticks] == [
        (fx.S1, 0),
        (fx.S1, 1),
        (fx.S1, 2),
        (fx.S2, 0),
    ]
    assert [(t["on_time"], t["late"], t["missing"]) for t in ticks] == [
        (2, 0, 0),
        (1, 1, 0),
        (1, 0, 1),
        (1, 0, 1),
    ]
    assert [t["on_time_ratio"] for t in ticks] == [1.0, 0.5, 0.5, 0.5]
    assert [t["latency_ms"]["p50"] for t in ticks] == [100.0, 120.0, 200.0, 50.0]
    assert [t["latency_ms"]["max"] for t in ticks] == [300.0, 700.0, 200.0, 50.0]
    # the last round has no next round: its deadline is the configured tick interval
    assert [t["deadline_ms"] for t in ticks] == [500.0, 500.0, 500.0, 500.0]
    assert [t["client_latency_ms"] for t in ticks] == [90.0, 110.0, 190.0, 45.0]
    assert [t["commands"] for t in ticks] == [40, 30, 30, 20]
    assert ticks[0]["hedged"] == 1


def test_per_slot_figures(rep: dict[str, Any]) -> None:
    s1, s2 = rep["per_slot"]
    assert s1 == {
        "slot": fx.S1,
        "rounds": 3,
        "on_time": 4,
        "late": 1,
        "missing": 1,
        "on_time_ratio": round(4 / 6, 6),
        "latency_max_ms": 700.0,
        "commands": 100,
        "hedged": 1,
        "fleet_trades": 3,
        "fleet_energy_kwh": 1.5,
        "fleet_fees_ct": 3.0,
        "settlement_trades": 0,  # none in this run
        "settlement_energy_kwh": 0.0,
        "avg_rate_ct_kwh": 30.0,  # 45 ct / 1.5 kWh
        "trades": 4,
        "energy_kwh": 2.5,
        "fee_revenue_ct": 3.5,
    }
    assert (s2["slot"], s2["rounds"], s2["on_time"], s2["missing"]) == (fx.S2, 1, 1, 1)
    assert (s2["fleet_trades"], s2["fleet_energy_kwh"], s2["avg_rate_ct_kwh"]) == (3, 2.0, 25.0)
    assert (s2["trades"], s2["energy_kwh"], s2["fee_revenue_ct"]) == (3, 1.0, 1.5)


def test_per_market_totals_highest_fees_first(rep: dict[str, Any]) -> None:
    grid, house = rep["per_market"]
    assert grid == {
        "market": "Grid",
        "slots": 2,
        "traded_kwh": 1.0,
        "fee_revenue_ct": 3.0,
        "import_kwh": 0.5,
        "export_kwh": 0.0,
        "avg_rate": 30.0,
    }
    assert house["market"] == "House 1" and house["fee_revenue_ct"] == 2.0
    assert house["traded_kwh"] == 3.5
    assert house["avg_rate"] == round((28.0 * 1.5 + 25.0 * 2.0) / 3.5, 6)


def test_per_aggregator_worst_first(rep: dict[str, Any]) -> None:
    b, a = rep["per_aggregator"]
    assert (b["uuid"], b["name"], b["on_time"], b["late"], b["missing"]) == (fx.B, "agg-b", 1, 1, 2)
    assert b["on_time_ratio"] == 0.25
    assert (b["trades"], b["energy_kwh"], b["fees_ct"], b["finished"]) == (1, 0.5, 1.0, True)
    assert (a["uuid"], a["on_time"], a["trades"], a["energy_kwh"]) == (fx.A, 4, 5, 3.0)


def test_a_follow_up_round_adds_its_commands_but_not_its_timing() -> None:
    follow_up = fx._round(fx.S1, 1, 480.0, 5, hedged=2) | {"round": f"{fx.S1}#1.1"}
    recs = fx.records()
    recs.insert(4, follow_up)
    tick = build_report(**fx.inputs(records=recs))["per_tick"][1]
    assert (tick["client_latency_ms"], tick["commands"], tick["hedged"]) == (110.0, 35, 2)


def test_trade_records_take_the_slot_of_the_round_before_them_unless_they_name_one() -> None:
    recs = [
        {"kind": "trade", "trades": 1},
        {"kind": "round", "slot": "s1"},
        {"kind": "trade", "trades": 2},
        {"kind": "trade", "trades": 3, "slot": "s0"},
    ]
    assert [(s, r["trades"]) for s, r in attribute_trades(recs)] == [("", 1), ("s1", 2), ("s0", 3)]


def test_without_market_statistics_the_fleet_side_fills_in() -> None:
    rep = build_report(**fx.inputs(market_stats=None, slot_totals=None))
    assert rep["per_market"] == [] and rep["fee_revenue_ct"] is None
    s1 = rep["per_slot"][0]
    assert (s1["trades"], s1["energy_kwh"], s1["fee_revenue_ct"]) == (None, None, None)
    assert s1["fleet_energy_kwh"] == 1.5


def test_a_run_without_answers_or_counters_still_reports(tmp_path: Path) -> None:
    """The shape of ``gridfleet sim`` with no client: no aggregator, every figure empty."""
    empty = {
        "meta": {"counts": {"rounds": 20, "trades": 0, "energy_traded_kwh": 0.0}},
        "summary": {
            "rounds": 10,
            "aggregator_rounds": 0,
            "on_time": 0,
            "late": 0,
            "missing": 0,
            "on_time_ratio": None,
            "first_batch_ms": {"p50": None, "p95": None, "p99": None, "max": None},
            "last_batch_ms": {"p50": None, "p95": None, "p99": None, "max": None},
            "unattributed_batches": 0,
        },
        "ticks": [],
        "aggregators": {},
    }
    html = write_report(tmp_path, sim_report=empty, records=[], counters={}, meta={})
    rep = orjson.loads((tmp_path / "report.json").read_bytes())
    assert html == tmp_path / "report.html" and html.stat().st_size > 0
    assert rep["ticks"] == 10 and rep["on_time_ratio"] is None
    assert rep["latency_ms"] == {"p50": None, "p95": None, "p99": None, "max": None}
    assert rep["commands_sent"] == 0 and rep["per_tick"] == [] and rep["per_aggregator"] == []


def test_write_report_writes_what_build_report_computes(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "x"
    html = write_report(out, **fx.inputs())
    assert html == out / "report.html"
    assert orjson.loads((out / "report.json").read_bytes()) == build_report(**fx.inputs())
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_settlement_trades_are_counted_apart_from_spot() -> None:
    records = [
        {"kind": "round", "slot": "2024-06-01T00:15", "tick": 0, "commands": 2},
        {
            "kind": "trade",
            "aggregator": "a1",
            "trades": 2,
            "energy_kwh": 1.0,
            "price_ct": 30.0,
            "settlement_trades": 1,
            "settlement_energy_kwh": 0.25,
            "settlement_price_ct": 5.0,
        },
    ]
    counts = {
        "settlement_markets": True,
        "trades": 2,
        "settlement_trades": 1,
        "settlement_energy_kwh": 0.25,
        "settlement_deviation_kwh": 1.0,
        "settlement_unsettled_kwh": 0.5,
    }
    rep = build_report(
        sim_report={"meta": {"counts": counts}},
        records=records,
        counters={"trades": "2", "settlement_trades": "1", "settlement_energy_kwh": "0.25"},
        meta={"tick_interval_s": 1.0},
    )
    assert rep["trades"] == 2  # spot only
    assert rep["settlement"] == {
        "trades": 1,
        "energy_kwh": 0.25,
        "deviation_kwh": 1.0,
        "unsettled_kwh": 0.5,
        "fleet_trades": 1,
        "fleet_energy_kwh": 0.25,
        "fleet_price_ct": 5.0,
    }
    assert rep["client"]["counters"]["settlement_trades"] == 1
    assert rep["client"]["counters"]["settlement_energy_kwh"] == 0.25
    (slot,) = rep["per_slot"]
    assert (slot["fleet_trades"], slot["settlement_trades"]) == (2, 1)
    (agg,) = rep["per_aggregator"]
    assert (agg["trades"], agg["settlement_trades"], agg["settlement_energy_kwh"]) == (2, 1, 0.25)


def test_a_run_without_settlement_has_no_settlement_section() -> None:
    rep = build_report(
        sim_report={"meta": {"counts": {"settlement_markets": False, "settlement_trades": 0}}},
        records=[],
        counters={},
        meta={"tick_interval_s": 1.0},
    )
    assert rep["settlement"] is None
