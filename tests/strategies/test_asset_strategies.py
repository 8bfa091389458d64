"""Fixed rate, settlement, degrees of freedom (requirements) and forecasts."""

from __future__ import annotations

import json

import pytest

from gridfleet.strategies import registry
from gridfleet.strategies.base import StrategyError
from gridfleet.strategies.commands import Bid, Offer, SetEnergyForecast, SetEnergyMeasurement
from gridfleet.strategies.invariants import order_violations
from tests.strategies.helpers import (
    LOAD,
    METER,
    PV,
    STORAGE,
    STRATEGY_DATA,
    asset,
    batch,
    ctx,
    orders_by_uuid,
)


def test_fixed_rate_trades_everything_at_the_rate_on_every_tick():
    b = batch(
        [
            asset("load", LOAD, requirement=0.5),
            asset("pv", PV, available=0.25),
            asset("bat", STORAGE, to_buy=1.0, to_sell=0.5),
            asset("meter", METER, requirement=0.1, available=0.2),
            asset("idle", LOAD, requirement=1e-6),
        ]
    )
    strategy = registry.build("fixed_rate", {"rate": 12.5, "offer_rate": 20})
    for tick in range(10):
        got = orders_by_uuid(b, strategy.evaluate(ctx(tick), b, {}))
        assert got == {
            ("uuid-load", "bid"): (0.5, 12.5),
            ("uuid-pv", "offer"): (0.25, 20.0),
            ("uuid-bat", "bid"): (1.0, 12.5),
            ("uuid-bat", "offer"): (0.5, 20.0),
            ("uuid-meter", "bid"): (0.1, 12.5),
            ("uuid-meter", "offer"): (0.2, 20.0),
        }
    quiet = registry.build("fixed_rate", {"post_on_ticks": False})
    assert len(quiet.evaluate(ctx(4), b, {}).orders) == 0


def test_settlement_bids_positive_offers_negative_on_each_slot():
    b = batch(
        [
            asset("load", LOAD, deviations={"2024-06-01T11:45": 0.3, "2024-06-01T11:30": -0.2}),
            asset("pv", PV, deviations={"2024-06-01T11:45": -0.4}),
            asset("empty", LOAD, deviations={}),  # the SDK template crashes here
            asset("none", PV, deviations=None),
            asset("tiny", LOAD, deviations={"2024-06-01T11:45": 1e-5}),
        ]
    )
    strategy = registry.build("settlement", {"bid_rate": 5, "offer_rate": 10})
    result = strategy.evaluate(ctx(0), b, {})
    assert result.commands == [
        (0, Offer(energy_kwh=0.2, rate=10, time_slot="2024-06-01T11:30")),
        (0, Bid(energy_kwh=0.3, rate=5, time_slot="2024-06-01T11:45")),
        (1, Offer(energy_kwh=0.4, rate=10, time_slot="2024-06-01T11:45")),
    ]
    assert order_violations(b, result) == []
    assert strategy.evaluate(ctx(3), b, {}).commands == []  # market events only by default


def test_settlement_with_no_deviation_data_does_nothing():
    b = batch([asset("load", LOAD, requirement=1.0)])
    assert registry.build("settlement", {}).evaluate(ctx(0), b, {}).commands == []


# ----------------------------------------------------------------------------- requirements

PARTNERS = {"PV 9 (15kW)": "uuid-pv9", "PV 5 (10kW)": "uuid-pv5"}


def dof_batch():
    return batch(
        [
            asset("Load 3 L17", LOAD, requirement=0.5),
            asset("Load 2 L21", LOAD, requirement=0.4),
            asset("Load 1 L13", LOAD, requirement=0.2),
            asset("Load 9", LOAD, requirement=0.3),  # not in the file: a plain bid
            asset("PV 9 (15kW)", PV, available=1.0),  # this strategy only bids
        ]
    )


def test_requirements_are_attached_to_bids_with_partner_uuids():
    strategy = registry.build(
        "requirements", {"path": str(STRATEGY_DATA / "requirements.json"), "rate": 10}
    )
    b = dof_batch()
    result = strategy.evaluate(ctx(0, names=PARTNERS), b, {})
    assert orders_by_uuid(b, result)[("uuid-Load 9", "bid")] == (0.3, 10.0)
    assert ("uuid-PV 9 (15kW)", "offer") not in orders_by_uuid(b, result)
    commands = dict(result.commands)
    # "Energy": "None", "Rate": "None": the bid's energy and rate.
    assert commands[0] == Bid(
        energy_kwh=0.5,
        rate=10,
        requirements=[
            {"trading_partners": ["uuid-pv9"], "energy_type": [], "energy": 0.5, "price": 5.0}
        ],
    )
    # "Energy": 10, "Rate": 3: energy min(10, 0.4) = 0.4, price 3 * 0.4 = 1.2.
    (req,) = commands[1].requirements
    assert req["trading_partners"] == ["uuid-pv5"]
    assert req["energy"] == 0.4
    assert req["price"] == pytest.approx(1.2)
    assert commands[2].requirements == [
        {"trading_partners": [], "energy_type": [], "energy": 0.2, "price": 2.0}
    ]
    assert order_violations(b, result) == []


def test_requirements_energy_cap_below_the_bid(tmp_path):
    path = tmp_path / "req.json"
    path.write_text(
        json.dumps(
            {"L": [{"Trading Partners": [], "Energy Types": ["PV"], "Energy": 0.1, "Rate": 4}]}
        )
    )
    strategy = registry.build("requirements", {"path": str(path)})
    b = batch([asset("L", LOAD, requirement=0.5)])
    ((_, bid),) = strategy.evaluate(ctx(0), b, {}).commands
    assert bid.energy_kwh == 0.5
    assert bid.requirements == [
        {"trading_partners": [], "energy_type": ["PV"], "energy": 0.1, "price": pytest.approx(0.4)}
    ]


def test_unknown_partner_is_a_clear_error_at_evaluation():
    strategy = registry.build("requirements", {"path": str(STRATEGY_DATA / "requirements.json")})
    with pytest.raises(StrategyError) as info:
        strategy.evaluate(ctx(0, names={"PV 5 (10kW)": "u5"}), dof_batch(), {})
    message = str(info.value)
    assert "requirements.json" in message
    assert "'PV 9 (15kW)'" in message
    assert '$["Load 3 L17"][0]' in message
    assert "'PV 5 (10kW)'" in message  # the known names are listed


def test_unknown_partner_is_refused_at_construction_when_names_are_given():
    with pytest.raises(StrategyError, match=r"unknown trading partner 'PV 9 \(15kW\)'"):
        registry.build(
            "requirements",
            {
                "path": str(STRATEGY_DATA / "requirements.json"),
                "known_assets": {"PV 5 (10kW)": "u5"},
            },
        )


# -------------------------------------------------------------------------------- forecasts


def test_forecast_for_next_slot_and_measurement_for_current(tmp_path):
    (tmp_path / "Load 1.csv").write_text(
        "time;energy_kWh;measured_kWh\n12:00:00;0,5;0,45\n12:15:00;0,75;0,7\n"
    )
    (tmp_path / "PV 1.csv").write_text("time,energy_kWh\n12:00,1.5\n2024-06-01T12:15,2.5\n")
    strategy = registry.build("forecast", {"profile_dir": str(tmp_path)})
    b = batch(
        [
            asset("Load 1", LOAD),
            asset("PV 1", PV),
            asset("Unprofiled", LOAD),
        ]
    )
    result = strategy.evaluate(ctx(0), b, {})
    assert result.commands == [
        (0, SetEnergyForecast(energy_kwh={"2024-06-01T12:15": 0.75})),
        (0, SetEnergyMeasurement(energy_kwh={"2024-06-01T12:00": 0.45})),
        (1, SetEnergyForecast(energy_kwh={"2024-06-01T12:15": 2.5})),
        (1, SetEnergyMeasurement(energy_kwh={"2024-06-01T12:00": 1.5})),  # forecast stands in
    ]
    assert strategy.evaluate(ctx(5), b, {}).commands == []
    # A slot the profile does not cover: nothing for it.
    late = strategy.evaluate(ctx(0, slot="2024-06-01T12:15", next_slot="2024-06-01T12:30"), b, {})
    assert late.commands == [
        (0, SetEnergyMeasurement(energy_kwh={"2024-06-01T12:15": 0.7})),
        (1, SetEnergyMeasurement(energy_kwh={"2024-06-01T12:15": 2.5})),
    ]


def test_forecast_needs_profiles():
    with pytest.raises(registry.StrategyConfigError, match="profile_dir"):
        registry.build("forecast", {})


def test_composite_runs_children_in_order_with_namespaced_state(tmp_path):
    (tmp_path / "Load 1.csv").write_text("time,kWh\n12:15,0.5\n12:00,0.4\n")
    strategy = registry.build(
        "composite",
        {
            "strategies": [
                {"name": "forecast", "params": {"profile_dir": str(tmp_path)}},
                {"name": "settlement"},
                {"name": "linear_ramp"},
            ]
        },
    )
    b = batch([asset("Load 1", LOAD, requirement=0.4, deviations={"2024-06-01T11:45": 0.1})])
    result = strategy.evaluate(ctx(0), b, {})
    kinds = [type(c).__name__ for _, c in result.commands]
    assert kinds == ["SetEnergyForecast", "SetEnergyMeasurement", "Bid"]
    assert orders_by_uuid(b, result)[("uuid-Load 1", "bid")] == (0.4, 10.0)
