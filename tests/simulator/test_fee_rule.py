"""The embedded exchange's grid-fee rule, as gsy-e's: a market's fee is fixed when its slot opens.

gsy-e builds each slot's market with the area's fee of that moment
(``AreaMarkets._create_market``); a ``grid_fees`` command changes the area's fee only
(``area_reconfigure_event`` -> ``_set_grid_fees``). The tree shows ``current_market_fee`` =
the area's fee (``area.get_grid_fee()``) and ``last_market_fee`` = the last past market's fee.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from gridfleet.simulator.batch import ASSET, MARKET, BatchHandler
from gridfleet.simulator.events import EventBuilder
from gridfleet.simulator.grid import Grid, grid_from_dict
from gridfleet.simulator.state import ExchangeState

AGG = "agg-1"


def _grid() -> Grid:
    return grid_from_dict(
        {
            "market_maker_rate": 30,
            "feed_in_tariff_rate": 10,
            "grid": {
                "name": "Grid",
                "children": [
                    {"name": "Market Maker", "type": "market_maker"},
                    {
                        "name": "House",
                        "grid_fee_const": 2,
                        "children": [
                            {"name": "Load", "type": "load", "energy_kWh": 1.0},
                            {"name": "PV", "type": "pv", "energy_kWh": 1.0},
                        ],
                    },
                ],
            },
        }
    )


class Exchange:
    """The state, its batch handler and its tree builder, driven slot by slot."""

    def __init__(self) -> None:
        self.grid = g = _grid()
        self.state = ExchangeState(g, timedelta(minutes=15), datetime(2024, 6, 1, 12, 0))
        devices: dict[str, tuple[int, int]] = {u: (ASSET, i) for i, u in enumerate(g.asset_uuid)}
        devices.update({m.uuid: (MARKET, m.index) for m in g.markets})
        self.handler = BatchHandler(self.state, devices)
        self.selected = set(devices)
        self.events = EventBuilder(g)
        self.events.template(AGG, ())  # the full tree; no asset_info needed here
        self.house = next(m for m in g.markets if m.name == "House")
        self.load = g.asset_name.index("Load")
        self.pv = g.asset_name.index("PV")

    def batch(self, commands: dict[str, Any]) -> dict[str, Any]:
        raw, _ = self.handler.respond(
            {"type": "BATCHED", "transaction_id": "t", "batch_commands": commands},
            self.selected,
            AGG,
        )
        assert raw is not None
        return dict(orjson.loads(raw)["responses"])

    def set_fee(self, fee: float) -> None:
        (answer,) = self.batch(
            {self.house.uuid: [{"type": "grid_fees", "data": {"fee_const": fee}}]}
        )[self.house.uuid]
        assert answer["status"] == "ready"

    def house_head(self) -> dict[str, Any]:
        self.events.refresh_heads(self.state)
        tree = orjson.loads(self.events.tree(AGG))
        (root,) = tree.values()
        return dict(root["children"][self.house.uuid])

    def trade_pv_to_load(self, bid_rate: float, offer_rate: float) -> list[float]:
        """A bid of the load and an offer of the PV in House; the fee rates of the trades."""
        g = self.grid
        self.batch(
            {
                g.asset_uuid[self.load]: [{"type": "bid", "energy": 0.1, "price": bid_rate * 0.1}],
                g.asset_uuid[self.pv]: [
                    {"type": "offer", "energy": 0.1, "price": offer_rate * 0.1}
                ],
            }
        )
        report = self.state.match_tick()
        return [float(f / e) for f, e in zip(report.fee, report.energy, strict=True)]


def test_a_fee_change_mid_slot_applies_from_the_next_slots_market() -> None:
    ex = Exchange()
    ex.state.open_slot(1)
    assert ex.house_head()["current_market_fee"] == 2.0
    ex.set_fee(5)
    # The open market keeps the fee it opened with: a trade now pays 2, not 5.
    assert ex.trade_pv_to_load(bid_rate=20, offer_rate=15) == [pytest.approx(2.0)]
    # gsy-e's tree after the change: current = the area's (new) fee, last = the last past market's.
    head = ex.house_head()
    assert head["current_market_fee"] == 5.0
    assert head["last_market_fee"] == 2.0
    ex.state.close_slot()
    ex.state.open_slot(2)
    assert ex.trade_pv_to_load(bid_rate=20, offer_rate=15) == [pytest.approx(5.0)]
    head = ex.house_head()
    assert head["current_market_fee"] == 5.0
    assert head["last_market_fee"] == 2.0  # slot 1's market, which opened with 2


def test_a_bid_priced_with_the_slots_fee_trades_after_a_raise() -> None:
    """The load bids its offer's rate plus the fee the slot opened with (the linear ramp's cap);
    a raise mid-slot does not make that bid too low."""
    ex = Exchange()
    ex.state.open_slot(1)
    ex.set_fee(9)
    assert ex.trade_pv_to_load(bid_rate=17.0, offer_rate=15.0) == [pytest.approx(2.0)]


def test_last_market_fee_follows_the_closed_market_not_the_area() -> None:
    ex = Exchange()
    ex.state.open_slot(1)
    ex.state.close_slot()
    ex.state.open_slot(2)
    ex.set_fee(0)
    head = ex.house_head()
    assert head["current_market_fee"] is None  # gsy-e's tree shows no fee as null
    assert head["last_market_fee"] == 2.0
    ex.state.close_slot()
    ex.state.open_slot(3)
    assert ex.house_head()["last_market_fee"] == 2.0  # slot 2 opened with 2
    ex.state.close_slot()
    ex.state.open_slot(4)
    assert ex.house_head()["last_market_fee"] == 0.0  # slot 3 opened with 0
