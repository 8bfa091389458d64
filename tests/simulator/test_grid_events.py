"""Grid files and generator, aggregator assignment, event trees (full / pruned), the CLI."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from gridfleet.cli.sim import sim as sim_command
from gridfleet.simulator import assign_aggregators, generate_grid, load_grid_file
from gridfleet.simulator.events import EventBuilder
from gridfleet.simulator.grid import GridError
from gridfleet.simulator.state import ExchangeState
from tests.simulator.conftest import raw_grid_dict

GOOD = """
market_maker_rate: 30
feed_in_tariff_rate: 10
grid:
  name: Grid
  grid_fee_const: 1
  children:
    - name: House 1
      children:
        - {name: H1 Load, type: load, avg_power_kW: 0.5}
        - {name: H1 PV, type: pv, capacity_kW: 5}
        - {name: H1 Bat, type: storage, capacity_kWh: 10, initial_soc: 50}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD.replace("type: pv", "type: wind"),
            "grid.children[0].children[1].type: unknown type 'wind'",
        ),
        (
            GOOD.replace("capacity_kW: 5", "capacity_kW: -5"),
            "grid.children[0].children[1].capacity_kW: -5 is outside",
        ),
        (
            GOOD.replace("avg_power_kW: 0.5", "avg_power_kw: 0.5"),
            "grid.children[0].children[0].avg_power_kw: unknown parameter",
        ),
        (
            GOOD.replace("initial_soc: 50", "initial_soc: lots"),
            "grid.children[0].children[2].initial_soc: expected a number",
        ),
        (
            GOOD.replace("feed_in_tariff_rate: 10", "feed_in_tariff_rate: 40"),
            "feed_in_tariff_rate (40.0) must be below",
        ),
        (GOOD.replace("name: House 1", "nom: House 1"), "grid.children[0].name: every node needs"),
    ],
)
def test_grid_file_errors_name_the_path(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "grid.yaml"
    p.write_text(text)
    with pytest.raises(
        GridError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        load_grid_file(p)


def test_grid_file_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(GOOD)
    g = load_grid_file(tmp_path / "g.yaml", seed=3)
    assert [m.name for m in g.markets] == ["Grid", "House 1"] and g.n_assets == 3
    assert g.markets[0].has_market_maker and g.market_maker_rate == 30
    (tmp_path / "g.json").write_text(json.dumps(raw_grid_dict()))
    assert load_grid_file(tmp_path / "g.json").n_assets == 10
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(GridError, match="not valid JSON"):
        load_grid_file(tmp_path / "bad.json")


def test_generator_is_deterministic_and_shaped() -> None:
    a, b = (
        generate_grid(1000, communities=3, houses_size=7, seed=5),
        generate_grid(1000, communities=3, houses_size=7, seed=5),
    )
    assert a.asset_uuid == b.asset_uuid and a.asset_name == b.asset_name
    assert (a.load_avg_kw == b.load_avg_kw).all()
    assert generate_grid(1000, communities=3, houses_size=7, seed=6).asset_uuid != a.asset_uuid
    houses = [m for m in a.markets if m.assets]
    assert len(houses) == 143 and len([m for m in a.markets if m.depth == 1]) == 3
    assert a.asset_name[:3] == ["H1 Load0", "H1 PV1", "H1 Storage2"]
    fleet = assign_aggregators(a, 10)
    assert sorted(fleet) == [f"agg-{i:03d}" for i in range(10)]
    assets = [x for e in fleet.values() for x in e["assets"]]
    assert sorted(assets) == sorted(a.asset_name)
    markets = [x for e in fleet.values() for x in e["markets"]]
    assert sorted(markets) == sorted(m.name for m in a.markets)
    with pytest.raises(GridError, match="--aggregators"):
        assign_aggregators(a, 1000)


def _state(grid: Any) -> ExchangeState:
    st = ExchangeState(grid, timedelta(minutes=15), __import__("datetime").datetime(2024, 6, 1, 12))
    st.open_slot(1)
    return st


def test_pruned_and_full_trees() -> None:
    g = generate_grid(60, communities=2, houses_size=10, seed=1)
    st = _state(g)
    fleet = assign_aggregators(g, 3)
    own = [g.asset_name.index(n) for n in fleet["agg-001"]["assets"]]
    for mode in ("pruned", "full"):
        ev = EventBuilder(g, mode)  # type: ignore[arg-type]
        ev.refresh_heads(st)
        ev.template("x", own)
        ev.refresh_own_leaves(st, own)
        event = orjson.loads(
            ev.envelope("tick", st.market_slot, 10, ev.tree("x"), 10.0, 30.0).join()
        )
        assert event["slot_completion"] == "10%" and event["num_ticks"] == 10.0
        flat: dict[str, Any] = {}

        def walk(nodes: dict[str, Any], into: dict[str, Any] = flat) -> None:
            for u, n in nodes.items():
                into[u] = n
                walk(n.get("children", {}))

        walk(event["grid_tree"])
        with_info = {n["area_name"] for n in flat.values() if "asset_info" in n}
        assert with_info == set(fleet["agg-001"]["assets"])
        names = {n["area_name"] for n in flat.values()}
        assert "Market Maker" in names and "Grid" in names
        if mode == "pruned":
            leaves = {n["area_name"] for n in flat.values() if "children" not in n}
            assert leaves == with_info | {"Market Maker"}
            assert len(flat) < len(g.markets) + g.n_assets
        else:
            assert len(flat) == len(g.markets) + g.n_assets + 1


def test_cli_runs_a_small_grid_and_writes_report_and_fleet(tmp_path: Path, redis_url: str) -> None:
    runner = CliRunner()
    fleet, report = tmp_path / "fleet.json", tmp_path / "report.json"
    res = runner.invoke(
        sim_command,
        [
            "--redis-url",
            redis_url,
            "--assets",
            "40",
            "--aggregators",
            "2",
            "--slots",
            "2",
            "--tick-interval",
            "0.02",
            "--tree",
            "pruned",
            "--fleet-out",
            str(fleet),
            "--report",
            str(report),
        ],
    )
    assert res.exit_code == 0, res.output
    assert set(json.loads(fleet.read_text())) == {"agg-000", "agg-001"}
    rep = json.loads(report.read_text())
    assert rep["meta"]["counts"]["rounds"] == 20 and set(rep["summary"]) >= {
        "on_time",
        "late",
        "missing",
        "first_batch_ms",
    }
    bad = runner.invoke(sim_command, ["--assets", "10", "--grid", "x.yaml"])
    assert bad.exit_code == 2 and "not both" in bad.output
    none = runner.invoke(sim_command, [])
    assert none.exit_code == 2 and "--grid FILE" in none.output
