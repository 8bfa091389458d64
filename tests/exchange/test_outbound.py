"""Outbound validation: what kills or is rejected by the real exchange never leaves gridfleet.

Each case feeds the very command captured in tests/fixtures/protocol/examples to the validator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridfleet.exchange.outbound import (
    GSY_E_1_3,
    ExchangeProfile,
    OpenMarkets,
    OutboundRejected,
    Target,
    to_wire,
    validate_command,
    validate_orders,
)
from gridfleet.strategies import commands as intent
from gridfleet.strategies.context import AssetKind
from tests.conftest import load_example

SPOT = OpenMarkets(spot_slot="2024-06-01T00:15")
# The assets of the raw-client capture, with the energies the exchange reported for them.
LOAD = Target(
    "e5d98068-7d2f-4f29-a531-7b9bd21fb7bd", "H1 Load0", AssetKind.LOAD, energy_requirement_kwh=0.1
)
PV = Target(
    "48e0379f-f2bf-4121-b6a5-7f514d41753e", "H1 PV1", AssetKind.PV, available_energy_kwh=0.125
)
STORAGE = Target(
    "02c8e290", "H1 Storage2", AssetKind.STORAGE, energy_to_buy_kwh=0.75, energy_to_sell_kwh=0.75
)
MARKET = Target("e60698e0-c0fa-447d-9c6e-8bde0439d451", "House 2", None)


def captured(name: str) -> dict:
    """The single command of a captured single-command batch."""
    batch = load_example(name)["data"]["batch_commands"]
    ((_, commands),) = batch.items()
    (command,) = commands
    return command


def refused(command: dict, target: Target = LOAD, markets: OpenMarkets = SPOT) -> OutboundRejected:
    with pytest.raises(OutboundRejected) as info:
        validate_command(command, target, markets)
    err = info.value
    assert err.asset == target.label and target.name in str(err)
    return err


# -- the five batches that kill the exchange ---------------------------------------------------


def test_crash_bid_missing_price() -> None:
    err = refused(captured("11_CRASH_bid_missing_price_exchange_dies"))
    assert err.command == "bid" and "missing 'price'" in err.reason


def test_crash_bid_extra_key() -> None:
    err = refused(captured("11_CRASH_bid_extra_arg_exchange_dies"))
    assert "unexpected key(s) ['foo']" in err.reason


def test_crash_offer_missing_energy() -> None:
    err = refused(captured("11_CRASH_offer_missing_energy_exchange_dies"), PV)
    assert err.command == "offer" and "missing 'energy'" in err.reason


def test_crash_bid_string_energy() -> None:
    err = refused(captured("11_CRASH_bid_string_energy_exchange_dies"))
    assert "'energy' must be a number" in err.reason


def test_crash_past_time_slot() -> None:
    err = refused(captured("11_CRASH_past_time_slot_exchange_dies"))
    assert "2000-01-01T00:00" in err.reason and "not an open market" in err.reason


# -- what the exchange rejects with an error ---------------------------------------------------


def test_rejects_bid_above_requirement() -> None:
    err = refused(captured("06_batch_command_bid_energy_above_requirement"))
    assert "above the requirement" in err.reason


def test_rejects_offer_above_available() -> None:
    err = refused(captured("06_batch_command_offer_energy_above_available"), PV)
    assert "above the available" in err.reason


def test_offer_within_the_exchange_tolerance_passes() -> None:
    validate_command({"type": "offer", "energy": 0.125 + 1.5e-5, "price": 1.0}, PV, SPOT)


def test_bid_gets_no_tolerance() -> None:
    err = refused({"type": "bid", "energy": 0.1 + 1e-9, "price": 1.0})
    assert "above the requirement" in err.reason


def test_rejects_bid_negative_price() -> None:
    assert "negative price" in refused(captured("06_batch_command_bid_negative_price")).reason


def test_rejects_offer_negative_price() -> None:
    assert "negative price" in refused(captured("06_batch_command_offer_negative_price"), PV).reason


def test_rejects_zero_energy() -> None:
    assert "at or below 2e-05" in refused(captured("06_batch_command_bid_zero_energy")).reason


def test_rejects_negative_energy() -> None:
    assert "at or below" in refused(captured("06_batch_command_bid_negative_energy")).reason


def test_rejects_energy_exactly_at_the_floor() -> None:
    assert "at or below" in refused({"type": "bid", "energy": 2e-5, "price": 0.0}).reason


def test_rejects_bid_on_pv() -> None:
    assert "PV cannot bid" in refused(captured("06_batch_command_bid_on_pv"), PV).reason


def test_rejects_offer_on_load() -> None:
    assert "load cannot offer" in refused(captured("06_batch_command_offer_on_load")).reason


def test_rejects_unknown_type() -> None:
    assert (
        "unknown command type" in refused(captured("06_batch_command_unknown_command_type")).reason
    )


def test_rejects_missing_type() -> None:
    assert (
        "missing or non-string 'type'" in refused(captured("06_batch_command_missing_type")).reason
    )


def test_rejects_non_finite_numbers() -> None:
    assert "finite" in refused({"type": "bid", "energy": 0.05, "price": math.nan}).reason


def test_rejects_bool_as_number() -> None:
    assert "must be a number" in refused({"type": "bid", "energy": True, "price": 1}).reason


# -- accepted shapes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "target"),
    [
        ("06_batch_command_ok_bid", LOAD),
        (
            "06_batch_command_bid",
            Target("cb64326c-efbc-47ef-978a-dc464f194829", "Load 1 L13", AssetKind.LOAD, 0.023945),
        ),
        ("06_batch_command_delete_bid_all", LOAD),
        ("06_batch_command_delete_bid_unknown_id", LOAD),
        ("06_batch_command_device_info", LOAD),
        ("06_batch_command_list_bids", LOAD),
        ("06_batch_command_list_offers", PV),
    ],
)
def test_captured_good_commands_pass(example: str, target: Target) -> None:
    command = captured(example)
    assert validate_command(command, target, SPOT) == command


def test_storage_bids_and_offers_within_its_energies() -> None:
    validate_command(
        {"type": "bid", "energy": 0.75, "price": 7.5, "replace_existing": True}, STORAGE, SPOT
    )
    validate_command({"type": "offer", "energy": 0.75, "price": 22.5}, STORAGE, SPOT)
    assert "above" in refused({"type": "bid", "energy": 0.8, "price": 1}, STORAGE).reason


def test_market_commands() -> None:
    batch = load_example("06_batch_command_dso_market_stats_grid_fees")["data"]["batch_commands"]
    for command in next(iter(batch.values())):
        validate_command(command, MARKET, SPOT)
    assert "exactly one" in refused({"type": "grid_fees", "data": {}}, MARKET).reason
    assert (
        "above 100" in refused({"type": "grid_fees", "data": {"fee_percent": 150}}, MARKET).reason
    )
    assert "only markets" in refused({"type": "grid_fees", "data": {"fee_const": 1}}).reason
    assert "markets take only" in refused({"type": "bid", "energy": 1, "price": 1}, MARKET).reason


def test_forecasts() -> None:
    validate_command(
        {"type": "set_energy_forecast", "energy_forecast": {"2024-06-01T00:30": 0.2}}, PV, SPOT
    )
    err = refused(
        {"type": "set_energy_measurement", "energy_measurement": {"2024-06-01T00:15": -1.0}}, PV
    )
    assert ">= 0" in err.reason


@pytest.mark.parametrize(
    "key",
    [
        "not-a-slot",  # settlement probe 15: gsy-e answers an error
        "2024-06-01T00:15:00+00:00",  # probe 16: an offset is not accepted
        "00:15",  # time-only: gsy-e reads it as today's date, whatever the simulation's
        "2024-06-01T00:15:00",
        "2024-13-01T00:15",  # not a date
        "",
    ],
)
def test_forecast_and_measurement_keys_must_be_slot_labels(key: str) -> None:
    for ctype, field in (
        ("set_energy_forecast", "energy_forecast"),
        ("set_energy_measurement", "energy_measurement"),
    ):
        err = refused({"type": ctype, field: {key: 0.5}}, PV)
        assert "slot key" in err.reason


def test_settlement_slot_orders_are_capped_by_the_deviation() -> None:
    markets = OpenMarkets("2024-06-01T00:15", frozenset({"2024-06-01T00:00"}))
    load = Target("l", "L", AssetKind.LOAD, 0.1, unsettled_deviation_kwh={"2024-06-01T00:00": 0.3})
    validate_command(
        {"type": "bid", "energy": 0.3, "price": 1, "time_slot": "2024-06-01T00:00"}, load, markets
    )
    assert (
        "unsettled"
        in refused(
            {"type": "bid", "energy": 0.31, "price": 1, "time_slot": "2024-06-01T00:00"},
            load,
            markets,
        ).reason
    )


def test_requirements_only_for_exchanges_that_take_them() -> None:
    bid = {"type": "bid", "energy": 0.05, "price": 1, "requirements": [{"trading_partners": ["x"]}]}
    assert "unexpected key(s) ['requirements']" in refused(bid).reason
    validate_command(bid, LOAD, SPOT, ExchangeProfile(accepts_requirements=True))
    assert GSY_E_1_3.accepts_requirements is False


def test_to_wire_prices_are_total_cents() -> None:
    wire = to_wire(intent.Bid(energy_kwh=0.5, rate=20.0))
    assert wire == {"type": "bid", "energy": 0.5, "price": 10.0, "replace_existing": True}
    assert to_wire(intent.GridFees(fee_percent=5)) == {
        "type": "grid_fees",
        "data": {"fee_percent": 5},
    }
    assert to_wire(intent.DeleteOffer("o1")) == {"type": "delete_offer", "offer_id": "o1"}


# -- vectorized checks agree with the single-command checks -----------------------------------

kinds = st.sampled_from([AssetKind.LOAD, AssetKind.PV, AssetKind.STORAGE])
energies = st.floats(min_value=-0.1, max_value=2.0, allow_nan=False)
rates = st.floats(min_value=-10, max_value=100, allow_nan=False)


@given(
    st.lists(
        st.tuples(kinds, st.booleans(), energies, rates, energies, energies),
        min_size=1,
        max_size=30,
    )
)
def test_validate_orders_matches_validate_command(rows: list) -> None:
    kind = np.array([r[0] for r in rows], dtype=np.int8)
    is_bid = np.array([r[1] for r in rows])
    energy = np.array([r[2] for r in rows])
    rate = np.array([r[3] for r in rows])
    need = np.array([max(r[4], 0) for r in rows])
    have = np.array([max(r[5], 0) for r in rows])
    check = validate_orders(kind, is_bid, energy, rate, need, have, need, have)
    for i, r in enumerate(rows):
        target = Target("a", "A", AssetKind(r[0]), need[i], have[i], need[i], have[i])
        side = "bid" if r[1] else "offer"
        try:
            validate_command(
                {"type": side, "energy": float(energy[i]), "price": float(rate[i] * energy[i])},
                target,
                SPOT,
            )
            single_ok = True
        except OutboundRejected:
            single_ok = False
        assert bool(check.ok[i]) == single_ok, (r, check.refusals)


def test_orders_beyond_the_bounds_or_against_a_nan_cap_are_refused() -> None:
    """Found by the whole-path property test: a NaN requirement compared as ``energy > cap``
    let any bid through; and an overflowing rate x energy would go out as a null price."""
    nan_load = Target("n", "NaN load", AssetKind.LOAD, energy_requirement_kwh=math.nan)
    assert "requirement" in refused({"type": "bid", "energy": 1.0, "price": 1.0}, nan_load).reason
    big = Target("b", "Big load", AssetKind.LOAD, energy_requirement_kwh=1e308)
    assert "bound" in refused({"type": "bid", "energy": 1e8, "price": 1.0}, big).reason
    assert "bound" in refused({"type": "bid", "energy": 1.0, "price": 2e6}, big).reason
    check = validate_orders(
        np.array([AssetKind.LOAD, AssetKind.LOAD, AssetKind.LOAD], dtype=np.int8),
        np.array([True, True, True]),
        np.array([1.0, 1e308, 1.0]),
        np.array([30.0, 30.0, 30.0]),
        np.array([math.nan, 1e308, 2.0]),
        np.zeros(3),
        np.zeros(3),
        np.zeros(3),
    )
    assert check.ok.tolist() == [False, False, True]
    assert {r[0]: r[2] for r in check.refusals} == {
        0: "bid energy above the requirement",
        1: "energy and price must be finite",  # 1e308 x 30 overflows
    }
    assert check.price[2] == 30.0


# -- settlement: a time_slot that is not an open market never leaves (it kills gsy-e) ---------

OPEN_SETTLEMENT = frozenset({"2024-06-01T00:00"})
slots = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2024-06-01T00:15",  # the spot slot
            "2024-06-01T00:00",  # the open settlement market
            "2024-05-31T23:45",  # closed (probe 21 kills gsy-e with such a slot)
            "2024-06-01T00:30",  # a future slot: no future markets
            "00:00",  # time-only: gsy-e reads it as today's date, not the simulation's
            "2024-06-01T00:00:00+00:00",  # with an offset: not accepted
            "not-a-slot",  # probe 22 kills gsy-e with it
            "",
        ]
    ),
    st.text(max_size=20),
)


@given(
    slots,
    st.sampled_from(["bid", "offer"]),
    st.sampled_from([AssetKind.LOAD, AssetKind.PV]),
    st.floats(min_value=-2.0, max_value=2.0, allow_nan=False),
    st.floats(min_value=0.0, max_value=3.0, allow_nan=False),
)
def test_no_order_for_a_closed_or_unparsable_time_slot_is_ever_accepted(
    slot: str | None, side: str, kind: AssetKind, deviation: float, energy: float
) -> None:
    markets = OpenMarkets("2024-06-01T00:15", OPEN_SETTLEMENT)
    target = Target(
        "a", "A", kind, 1.0, 1.0, unsettled_deviation_kwh={"2024-06-01T00:00": deviation}
    )
    command = {"type": side, "energy": energy, "price": 1.0}
    if slot is not None:
        command["time_slot"] = slot
    try:
        sent = validate_command(command, target, markets)
    except OutboundRejected:
        return
    sent_slot = sent.get("time_slot")
    assert sent_slot is None or sent_slot == markets.spot_slot or sent_slot in OPEN_SETTLEMENT
    if sent_slot in OPEN_SETTLEMENT:  # settlement: the deviation's sign and size
        assert (deviation > 0) if side == "bid" else (deviation < 0)
        assert energy <= abs(deviation) + 1e-9
