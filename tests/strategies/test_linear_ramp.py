"""Golden values of the linear ramp (the SDK's basic strategies), computed by hand."""

from __future__ import annotations

import pytest

from gridfleet.strategies.builtin import LinearRamp, LinearRampPerAsset
from gridfleet.strategies.builtin.linear_ramp import LinearRampConfig
from gridfleet.strategies.fees import GridTopology, fees_to_market_maker
from tests.conftest import load_example
from tests.strategies.helpers import LOAD, METER, PV, STORAGE, asset, batch, ctx, orders_by_uuid

# F = 10, M = 30, f = 2, N = 10: slope M + 2f - F = 24, med = 20.
# Loads: F - f + 2.4 i = 8 + 2.4 i, then M + f = 32 for i = 8, 9.
LOAD_F2 = [8.0, 10.4, 12.8, 15.2, 17.6, 20.0, 22.4, 24.8, 32.0, 32.0]
# PVs: M + f - 2.4 i = 32 - 2.4 i, then F - f = 8.
PV_F2 = [32.0, 29.6, 27.2, 24.8, 22.4, 20.0, 17.6, 15.2, 8.0, 8.0]
# Storage buys (F - f) + (med - (F - f)) i/10 = 8 + 1.2 i; sells (M + f) - (M + f - med) i/10.
STORAGE_BUY_F2 = [8.0, 9.2, 10.4, 11.6, 12.8, 14.0, 15.2, 16.4, 17.6, 18.8]
STORAGE_SELL_F2 = [32.0, 30.8, 29.6, 28.4, 27.2, 26.0, 24.8, 23.6, 22.4, 21.2]

# F = 0, M = 30, f = 5 (the fee is larger than the tariff): negative rates clamp to 0.
# Loads -5 + 4 i; PVs 35 - 4 i then max(0, -5); storage med = 15: buy -5 + 2 i, sell 35 - 2 i.
LOAD_CLAMP = [0.0, 0.0, 3.0, 7.0, 11.0, 15.0, 19.0, 23.0, 35.0, 35.0]
PV_CLAMP = [35.0, 31.0, 27.0, 23.0, 19.0, 15.0, 11.0, 7.0, 0.0, 0.0]
STORAGE_BUY_CLAMP = [0.0, 0.0, 0.0, 1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0]
STORAGE_SELL_CLAMP = [35.0, 33.0, 31.0, 29.0, 27.0, 25.0, 23.0, 21.0, 19.0, 17.0]

STRATEGIES = [LinearRamp, LinearRampPerAsset]


def fleet(fee: float):
    return batch(
        [
            asset("load", LOAD, requirement=0.5, fee=fee),
            asset("pv", PV, available=0.25, fee=fee),
            asset("bat", STORAGE, to_buy=1.25, to_sell=0.75, fee=fee),
            asset("meter", METER, requirement=0.1, available=0.2, fee=fee),
        ]
    )


@pytest.mark.parametrize("cls", STRATEGIES)
@pytest.mark.parametrize("tick", range(10))
@pytest.mark.parametrize(
    ("fit", "mmr", "fee", "load", "pv", "buy", "sell"),
    [
        (10.0, 30.0, 2.0, LOAD_F2, PV_F2, STORAGE_BUY_F2, STORAGE_SELL_F2),
        (0.0, 30.0, 5.0, LOAD_CLAMP, PV_CLAMP, STORAGE_BUY_CLAMP, STORAGE_SELL_CLAMP),
    ],
    ids=["fee2", "clamped"],
)
def test_golden_rates_per_tick(cls, tick, fit, mmr, fee, load, pv, buy, sell):
    b = fleet(fee)
    # tick 0 is the market event; the others are ticks at tick * 10 % of the slot.
    result = cls().evaluate(ctx(tick, fit=fit, mmr=mmr), b, {})
    got = orders_by_uuid(b, result)
    assert got == {
        ("uuid-load", "bid"): (0.5, pytest.approx(load[tick])),
        ("uuid-pv", "offer"): (0.25, pytest.approx(pv[tick])),
        ("uuid-bat", "bid"): (1.25, pytest.approx(buy[tick])),
        ("uuid-bat", "offer"): (0.75, pytest.approx(sell[tick])),
        ("uuid-meter", "bid"): (0.1, pytest.approx(load[tick])),
        ("uuid-meter", "offer"): (0.2, pytest.approx(pv[tick])),
    }
    assert all(rate >= 0 for _, rate in got.values())
    assert result.state == {}


@pytest.mark.parametrize("cls", STRATEGIES)
def test_market_event_is_index_zero_and_late_ticks_clamp(cls):
    b = fleet(2.0)
    at_market = orders_by_uuid(b, cls().evaluate(ctx(7, market_event=True), b, {}))
    assert at_market[("uuid-load", "bid")][1] == pytest.approx(LOAD_F2[0])
    beyond = orders_by_uuid(b, cls().evaluate(ctx(12, market_event=False), b, {}))
    assert beyond[("uuid-load", "bid")][1] == pytest.approx(LOAD_F2[9])


@pytest.mark.parametrize("cls", STRATEGIES)
def test_energy_rules_skip_instead_of_emitting(cls):
    b = batch(
        [
            asset("tiny-load", LOAD, requirement=2e-5),  # at the exchange's floor: skipped
            asset("load-just-above", LOAD, requirement=2.1e-5),
            asset("dark-pv", PV, available=0.0),
            asset("full-bat", STORAGE, to_buy=0.0, to_sell=-0.0),
            asset("pv-with-requirement", PV, requirement=5.0, available=1.0),  # never bids
            asset("load-with-energy", LOAD, requirement=1.0, available=3.0),  # never offers
            asset("bat", STORAGE, requirement=9.0, available=9.0, to_buy=0.5, to_sell=0.25),
        ]
    )
    got = orders_by_uuid(b, cls().evaluate(ctx(3), b, {}))
    assert {k: v[0] for k, v in got.items()} == {
        ("uuid-load-just-above", "bid"): 2.1e-5,
        ("uuid-pv-with-requirement", "offer"): 1.0,
        ("uuid-load-with-energy", "bid"): 1.0,
        ("uuid-bat", "bid"): 0.5,  # energy_to_buy, not the requirement
        ("uuid-bat", "offer"): 0.25,  # energy_to_sell, not the available energy
    }


def test_null_rates_emit_nothing():
    b = fleet(2.0)
    for cls in STRATEGIES:
        result = cls().evaluate(ctx(0, fit=float("nan"), mmr=float("nan")), b, {})
        assert orders_by_uuid(b, result) == {}


def test_num_ticks_from_config_overrides_the_event():
    b = fleet(0.0)
    # N = 5: loads at 10 + 20 * 2/5 = 18 for i = 2; i = 3, 4 are the last two: M + f = 30.
    strategy = LinearRamp(LinearRampConfig(num_ticks=5))
    assert orders_by_uuid(b, strategy.evaluate(ctx(2), b, {}))[("uuid-load", "bid")][1] == 18.0
    assert orders_by_uuid(b, strategy.evaluate(ctx(3), b, {}))[("uuid-load", "bid")][1] == 30.0


def test_matches_the_sdk_on_a_captured_market_event():
    """The SDK's ramp bid 13 ct/kWh for Load 1 L13 at the first market event of the capture."""
    event = load_example("05_event_market")["data"]
    topology = GridTopology.from_grid_tree(event["grid_tree"])
    fees = fees_to_market_maker(topology)
    row = topology.index("Load 1 L13")
    assert fees[row] == 8.0  # Community 4 + Grid 4 (the house's fee is null)
    b = batch([asset("Load 1 L13", LOAD, requirement=0.023945, fee=float(fees[row]))])
    c = ctx(0, fit=event["feed_in_tariff_rate"], mmr=event["market_maker_rate"])
    energy, rate = orders_by_uuid(b, LinearRamp().evaluate(c, b, {}))[("uuid-Load 1 L13", "bid")]
    assert (energy, rate) == (0.023945, 13.0)
    sent = load_example("06_batch_command_bid")["data"]["batch_commands"]
    (command,) = sent["cb64326c-efbc-47ef-978a-dc464f194829"]
    assert command["energy"] == energy
    assert command["price"] == pytest.approx(rate * energy)
