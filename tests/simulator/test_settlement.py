"""The embedded exchange's settlement markets against the captured gsy-e session.

The grid is the capture's (tests/fixtures/protocol/settlement/README.md): two houses with a
load and a PV each driven by forecasts, a probe load and PV, a fridge and a cell tower that
nobody selects, and the Market Maker; 15-minute slots from 2026-12-02T00:00, settlement markets
switched on in the grid file. A raw wire client on a real Redis replays the captured requests
(with this grid's uuids) and every answer is compared with the captured answer's shape; the
numbers follow the capture's rules (deviation = measured - bought for loads, sold - measured for
PVs; trades lower it; a later measurement overwrites it; markets close after an hour).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from gridfleet.exchange import channels
from gridfleet.simulator import Simulator
from gridfleet.simulator.grid import Grid, GridError, grid_from_dict
from gridfleet.simulator.settlement import parse_time_slot
from tests.conftest import PROTOCOL_DIR
from tests.simulator.conftest import WireClient

pytestmark = pytest.mark.integration

EXAMPLES = PROTOCOL_DIR / "settlement" / "examples"
DAY = "2026-12-02"
START = datetime(2026, 12, 2)
TEMPLATE = ["H1 General Load", "H1 PV", "H2 General Load", "H2 PV"]
PROBES = ["Probe Load", "Probe PV"]


def example(name: str) -> dict[str, Any]:
    return dict(json.loads((EXAMPLES / f"{name}.json").read_text())["data"])


def captured_answer(name: str) -> dict[str, Any]:
    (answers,) = list(example(name)["responses"].values())[:1]
    return dict(answers[0])


def captured_commands(name: str) -> list[dict[str, Any]]:
    (commands,) = list(example(name)["batch_commands"].values())[:1]
    return list(commands)


def shape(resp: dict[str, Any]) -> tuple[Any, ...]:
    return (resp.get("command"), resp.get("status"), resp.get("market_type"), frozenset(resp))


def settlement_grid(settlement: bool = True) -> Grid:
    def house(n: int, extra: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": f"House {n}",
            "children": [
                {"name": f"H{n} General Load", "type": "load", "energy_kWh": 1.2},
                {"name": f"H{n} PV", "type": "pv", "energy_kWh": 0.86},
                *extra,
            ],
        }

    return grid_from_dict(
        {
            "market_maker_rate": 30,
            "feed_in_tariff_rate": 5,
            "settlement_markets": settlement,
            "grid": {
                "name": "Grid",
                "children": [
                    house(1, [{"name": "H1 Fridge", "type": "load", "energy_kWh": 0.1}]),
                    house(
                        2,
                        [
                            {"name": "Probe Load", "type": "load", "energy_kWh": 0.5},
                            {"name": "Probe PV", "type": "pv", "energy_kWh": 0.4},
                        ],
                    ),
                    {"name": "Cell Tower", "type": "load", "energy_kWh": 0.25},
                ],
            },
        },
        seed=7,
    )


class Session:
    """The wire client, its aggregator and devices, and helpers to step and read events."""

    def __init__(self, sim: Simulator, client: WireClient) -> None:
        self.sim = sim
        self.client = client
        self.agg = client.create("oracle")
        self.dev = {n: client.register(n) for n in TEMPLATE + PROBES}
        for uuid in self.dev.values():
            client.select(self.agg, uuid)

    def advance(self, n: int = 1) -> None:
        for _ in range(n):
            self.sim.advance()

    def batch(self, commands: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        resp = self.client.batch(self.agg, {self.dev[k]: v for k, v in commands.items()})
        assert resp is not None, commands
        return {
            name: resp["responses"][uuid]
            for name, uuid in self.dev.items()
            if uuid in resp["responses"]
        }

    def one(self, name: str, command: dict[str, Any]) -> dict[str, Any]:
        (answer,) = self.batch({name: [command]})[name]
        return answer

    def last_event(self, kind: str) -> dict[str, Any]:
        self.client.pump(0.1)
        events = [
            d
            for c, d in self.client.inbox
            if c == channels.aggregator_events(self.agg)
            and isinstance(d, dict)
            and d.get("event") == kind
        ]
        assert events, f"no {kind} event"
        return dict(events[-1])

    def info(self, event: dict[str, Any]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}

        def walk(nodes: dict[str, Any]) -> None:
            for node in nodes.values():
                if "asset_info" in node:
                    out[node["area_name"]] = node["asset_info"]
                walk(node.get("children", {}))

        walk(event["grid_tree"])
        return out

    def deviations(self, kind: str = "tick") -> dict[str, dict[str, float | None]]:
        return {
            name: info["unsettled_deviation_kWh"]
            for name, info in self.info(self.last_event(kind)).items()
        }


@pytest.fixture
def session(make_sim: Any, client: WireClient) -> Iterator[Session]:
    sim = make_sim(settlement_grid(), tick_interval=None, slots=9, start=START)
    s = Session(sim, client)
    # during 00:00 (the warm-up slot, nothing traded in spot): the bootstrap of the capture
    s.batch(
        {
            **{
                n: [
                    {"type": "set_energy_forecast", "energy_forecast": {f"{DAY}T00:15": 1.2}},
                    {
                        "type": "set_energy_measurement",
                        "energy_measurement": {f"{DAY}T00:00": 1.23},
                    },
                ]
                for n in ("H1 General Load", "H2 General Load")
            },
            **{
                n: [
                    {"type": "set_energy_forecast", "energy_forecast": {f"{DAY}T00:15": 0.86}},
                    {
                        "type": "set_energy_measurement",
                        "energy_measurement": {f"{DAY}T00:00": 0.87},
                    },
                ]
                for n in ("H1 PV", "H2 PV")
            },
            "Probe Load": [
                {"type": "set_energy_measurement", "energy_measurement": {f"{DAY}T00:00": 0.7}}
            ],
            "Probe PV": [
                {"type": "set_energy_measurement", "energy_measurement": {f"{DAY}T00:00": 0.3}}
            ],
        }
    )
    s.advance(11)  # the market event of 00:15 and its 0 % tick
    yield s


def test_the_market_event_after_a_slot_shows_its_deviations_in_the_captured_shape(
    session: Session,
) -> None:
    event = session.last_event("market")
    want = example("02_event_market_template_first_settlement_slot")
    assert event["market_slot"] == want["market_slot"] == f"{DAY}T00:15"
    assert set(event) == set(want)  # nothing new at the top level
    info = session.info(event)
    captured = {
        node: body
        for node, body in _asset_infos(want["grid_tree"]).items()
        if "unsettled_deviation_kWh" in body
    }
    for name, body in captured.items():
        assert list(info[name]) == list(body), name  # same keys, same order: deviation first
    assert info["H1 General Load"]["unsettled_deviation_kWh"] == {f"{DAY}T00:00": 1.23}
    assert info["H1 PV"]["unsettled_deviation_kWh"] == {f"{DAY}T00:00": -0.87}
    assert info["Probe Load"]["unsettled_deviation_kWh"] == {f"{DAY}T00:00": 0.7}
    assert info["Probe PV"]["unsettled_deviation_kWh"] == {f"{DAY}T00:00": -0.3}


def _asset_infos(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for node in tree.values():
        if "asset_info" in node:
            out[node["area_name"]] = node["asset_info"]
        out.update(_asset_infos(node.get("children", {})))
    return out


@pytest.mark.parametrize(
    ("probe", "asset"),
    [
        ("10_probe_settlement_bid_energy_gt_deviation", "Probe Load"),
        ("11_probe_settlement_offer_wrong_sign_load", "Probe Load"),
        ("14_probe_settlement_bid_wrong_sign_pv", "H2 PV"),
        ("12_probe_settlement_bid_valid", "Probe Load"),
        ("13_probe_settlement_offer_valid_pv", "Probe PV"),
        ("19_probe_bid_time_slot_is_spot_slot", "Probe Load"),
        ("15_probe_measurement_bad_slot_key", "Probe Load"),
        ("16_probe_measurement_iso_offset_key", "Probe Load"),
        ("17_probe_measurement_negative", "Probe Load"),
    ],
)
def test_each_probe_is_answered_in_the_captured_shape(
    session: Session, probe: str, asset: str
) -> None:
    got = session.one(asset, captured_commands(f"{probe}_request")[0])
    want = captured_answer(f"{probe}_response")
    assert shape(got) == shape(want)
    if "error_message" in want:
        head = want["error_message"].split(" on area ")[0]
        assert got["error_message"].startswith(head), got["error_message"]
        reason = want["error_message"].split("}")[-1]  # after the echoed arguments
        if asset.startswith("Probe"):  # the captured asset: the reason is the captured one
            assert got["error_message"].endswith(reason), got["error_message"]
    if want["status"] == "ready" and "market_type" in want:
        order = json.loads(got[want["command"]])
        captured = json.loads(want[want["command"]])
        assert set(order) == set(captured)
        assert order["time_slot"] == captured["time_slot"]


def test_settlement_orders_trade_the_deviations_down(session: Session) -> None:
    bid = session.one("Probe Load", captured_commands("12_probe_settlement_bid_valid_request")[0])
    offer = session.one(
        "H2 PV", {"type": "offer", "energy": 0.87, "price": 8.7, "time_slot": f"{DAY}T00:00"}
    )
    assert bid["status"] == offer["status"] == "ready"
    assert bid["market_type"] == offer["market_type"] == "Settlement Market"
    bid_id, offer_id = json.loads(bid["bid"])["id"], json.loads(offer["offer"])["id"]
    # a settlement bid is not a spot bid: the spot figures do not move
    session.advance()
    trades = session.last_event("trade")
    mine = {(t["bid_id"], t["offer_id"]) for t in trades["trade_list"]}
    assert (bid_id, offer_id) in mine
    (row, *_) = [t for t in trades["trade_list"] if t["buyer"] == "Probe Load"]
    want = example("06_event_trade_probe_settlement_bid_bought")["trade_list"][0]
    assert set(row) == set(want)
    assert row["traded_energy"] == 0.7 and row["trade_price"] == 14.0  # pay as bid, as captured
    dev = session.deviations()
    assert dev["Probe Load"][f"{DAY}T00:00"] is None  # fully settled
    assert dev["H2 PV"][f"{DAY}T00:00"] == pytest.approx(-0.17)
    info = session.info(session.last_event("tick"))
    assert info["Probe Load"]["energy_active_in_bids"] == 0.0
    listed = session.one("H2 PV", {"type": "list_offers", "time_slot": f"{DAY}T00:00"})
    assert [round(o["energy"], 8) for o in listed["offer_list"]] == [0.17]
    assert listed["offer_list"][0]["id"] == offer_id
    assert session.sim.counts.settlement_trades >= 1
    assert session.sim.counts.settlement_energy_kwh == pytest.approx(0.7)


def test_a_later_measurement_overwrites_the_deviation_at_the_next_cycle(session: Session) -> None:
    got = session.one(
        "Probe Load",
        {"type": "set_energy_measurement", "energy_measurement": {f"{DAY}T00:00": 0.9}},
    )
    assert got["status"] == "ready"
    assert session.deviations()["Probe Load"][f"{DAY}T00:00"] == 0.7  # not before the cycle
    session.advance(10)  # 00:30 opens
    dev = session.deviations("market")
    assert dev["Probe Load"][f"{DAY}T00:00"] == 0.9
    assert list(dev["Probe Load"]) == [f"{DAY}T00:00", f"{DAY}T00:15"]


def test_markets_close_after_an_hour_and_orders_naming_them_are_refused(
    session: Session,
) -> None:
    session.advance(10 * 4)  # 01:15: 00:00 has closed
    dev = session.deviations("market")
    assert list(dev["Probe Load"]) == [
        f"{DAY}T00:15",
        f"{DAY}T00:30",
        f"{DAY}T00:45",
        f"{DAY}T01:00",
    ]
    for probe in (
        "21_probe_settlement_bid_closed_time_slot_CRASH",
        "22_probe_bid_unparsable_time_slot_CRASH",
    ):
        got = session.one("Probe Load", captured_commands(f"{probe}_request")[0])
        assert got["status"] == "error", probe  # gsy-e exits here; this exchange answers
    session.advance()
    assert session.sim.error is None and not session.sim.finished.is_set()


def test_assets_that_do_not_measure_themselves_get_simulated_measurements(
    session: Session,
) -> None:
    state = session.sim.state
    assert state.settlement is not None
    slot = state.settlement.slots[f"{DAY}T00:00"]
    grid = session.sim.engine.grid
    fridge = grid.asset_name.index("H1 Fridge")
    probe = grid.asset_name.index("Probe Load")
    # the fridge sent nothing: 0.1 kWh altered by a 10 % normal draw, nothing bought
    assert slot.deviation[fridge] != 0.1 and abs(slot.deviation[fridge] - 0.1) < 0.05
    assert slot.deviation[probe] == 0.7  # its own measurement, unaltered


def test_settlement_is_off_unless_switched_on(make_sim: Any, client: WireClient) -> None:
    sim = make_sim(settlement_grid(settlement=False), tick_interval=None, slots=4, start=START)
    s = Session(sim, client)
    s.advance(11)
    info = s.info(s.last_event("market"))
    assert all("unsettled_deviation_kWh" not in body for body in info.values())
    got = s.one(
        "Probe Load", {"type": "bid", "energy": 0.1, "price": 1, "time_slot": f"{DAY}T00:00"}
    )
    assert got["status"] == "error" and got["market_type"] == "Spot Market"


def test_the_grid_file_switch_is_checked() -> None:
    with pytest.raises(GridError, match="settlement_markets"):
        grid_from_dict({"settlement_markets": "yes", "grid": {"name": "G", "children": []}})


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("2026-12-02T00:15", "2026-12-02T00:15"),
        ("2026-12-02T00:15:00", "2026-12-02T00:15"),
        ("2026-12-02T00", "2026-12-02T00:00"),
        ("December 02 2026, 00:15 h", "2026-12-02T00:15"),
        ("00:15", "2026-12-07T00:15"),
        ("2026-12-02T00:15:00+00:00", None),
        ("not-a-slot", None),
        (None, None),
        (15, None),
    ],
)
def test_time_slots_parse_as_gsy_e_parses_them(text: object, label: str | None) -> None:
    assert parse_time_slot(text, today=datetime(2026, 12, 7).date()) == label


def test_the_final_line_says_what_was_settled() -> None:
    from gridfleet.simulator.standalone import summary_line

    counts = {
        "rounds": 40,
        "events_sent": 90,
        "batches_received": 60,
        "trades": 300,
        "energy_traded_kwh": 31.9,
        "settlement_markets": True,
        "settlement_trades": 188,
        "settlement_energy_kwh": 0.7494,
        "settlement_deviation_kwh": 9.8,
    }
    report = {"summary": {"on_time": 60, "late": 0, "missing": 0}, "meta": {"counts": counts}}
    line = summary_line(report, None)
    assert "300 trades, 31.900 kWh; settled 188 trades, 0.749 kWh of 9.800 kWh deviation;" in line
    counts["settlement_markets"] = False
    assert "settled" not in summary_line(report, None)
