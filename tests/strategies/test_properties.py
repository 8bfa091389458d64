"""Property tests: no built-in strategy emits an order the exchange (or gridfleet) refuses.

``OUTBOUND_CHECKS`` lists the validators every strategy result must pass. The platform's
outbound validator (gridfleet/exchange/outbound.py) is meant to be appended there: a function
``(batch, result) -> list of problems``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridfleet.strategies import registry
from gridfleet.strategies.base import AssetStrategy
from gridfleet.strategies.commands import StrategyResult
from gridfleet.strategies.context import AssetBatch, AssetKind
from gridfleet.strategies.invariants import order_violations
from tests.strategies.helpers import STRATEGY_DATA, asset, batch, ctx

Check = Callable[[AssetBatch, StrategyResult], list]


def platform_outbound(batch: AssetBatch, result: StrategyResult) -> list:
    """What gridfleet's own outbound validation (gridfleet/exchange/outbound.py) refuses.

    Degrees of freedom are allowed here: whether the exchange takes them is the fleet's
    ``accepts_requirements``, not the strategy's business.
    """
    from gridfleet.exchange.outbound import (
        ExchangeProfile,
        OpenMarkets,
        OutboundRejected,
        to_wire,
        validate_command,
        validate_orders,
    )
    from gridfleet.platform.evaluate import _target

    problems: list = []
    o = result.orders
    if len(o):
        r = o.row
        check = validate_orders(
            batch.kind[r],
            o.is_bid,
            o.energy_kwh,
            o.rate,
            batch.energy_requirement_kwh[r],
            batch.available_energy_kwh[r],
            batch.energy_to_buy_kwh[r],
            batch.energy_to_sell_kwh[r],
        )
        problems += check.refusals
    slots = {s for dev in batch.unsettled_deviation_kwh or [] if dev for s in dev}
    markets = OpenMarkets("spot", frozenset(slots))
    for row, command in result.commands:
        try:
            validate_command(
                to_wire(command),
                _target(batch, row),
                markets,
                ExchangeProfile(accepts_requirements=True),
            )
        except OutboundRejected as exc:
            problems.append((row, command, exc.reason))
    return problems


OUTBOUND_CHECKS: list[Check] = [order_violations, platform_outbound]

PARTNERS = {"PV 9 (15kW)": "uuid-pv9", "PV 5 (10kW)": "uuid-pv5"}
ASSET_STRATEGIES: list[AssetStrategy] = [
    registry.build(name, params)  # type: ignore[misc]
    for name, params in [
        ("linear_ramp", {}),
        ("linear_ramp_per_asset", {}),
        ("fixed_rate", {"rate": 0, "offer_rate": 31.5}),
        ("settlement", {"bid_rate": 0}),
        ("requirements", {"path": str(STRATEGY_DATA / "requirements.json"), "rate": 3}),
        ("composite", {"strategies": [{"name": "settlement"}, {"name": "linear_ramp"}]}),
    ]
]

# Energies around the exchange's limits: zero, negative zero, the 2e-5 floor, NaN, big values.
energy = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-5, 2e-5, 2.00001e-5, 3e-5, float("nan"), -1.0]),
    st.floats(min_value=-5, max_value=500, allow_nan=False),
)
rate = st.one_of(st.floats(min_value=0, max_value=100), st.sampled_from([float("nan")]))
slot = st.sampled_from(["2024-06-01T11:30", "2024-06-01T11:45"])
names = st.sampled_from(["Load 3 L17", "Load 2 L21", "Load 1 L13", "x", "y", "PV 9 (15kW)"])


@st.composite
def assets(draw):
    rows = []
    for i in range(draw(st.integers(0, 12))):
        rows.append(
            asset(
                draw(names) + f"#{i}" if draw(st.booleans()) else draw(names),
                AssetKind(draw(st.integers(0, 3))),
                requirement=draw(energy),
                available=draw(energy),
                to_buy=draw(energy),
                to_sell=draw(energy),
                fee=draw(st.floats(min_value=0, max_value=50)),
                deviations=draw(st.none() | st.dictionaries(slot, energy, max_size=2)),
            )
        )
    # Duplicate names are fine; uuids must stay unique.
    for i, row in enumerate(rows):
        row["uuid"] = f"uuid-{i}"
    return batch(rows)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fleet=assets(),
    fit=rate,
    mmr=rate,
    tick=st.integers(-1, 12),
    market_event=st.booleans(),
    num_ticks=st.sampled_from([10, 4, 20]),
)
def test_no_builtin_asset_strategy_emits_a_refused_order(
    fleet, fit, mmr, tick, market_event, num_ticks
):
    context = ctx(
        tick, fit=fit, mmr=mmr, market_event=market_event, num_ticks=num_ticks, names=PARTNERS
    )
    for strategy in ASSET_STRATEGIES:
        result = strategy.evaluate(context, fleet, {})
        for check in OUTBOUND_CHECKS:
            assert check(fleet, result) == [], (strategy, check)
        assert result.orders.row.dtype == np.int64
        assert len(result.orders.row) == len(result.orders.rate) == len(result.orders.energy_kwh)


def test_the_checker_catches_every_rule():
    from gridfleet.strategies.commands import Bid, Offer, OrderArrays

    b = batch(
        [
            asset("load", AssetKind.LOAD, requirement=1.0),
            asset("pv", AssetKind.PV, available=1.0, deviations={"s": -0.5}),
        ]
    )
    bad = StrategyResult(
        orders=OrderArrays(
            row=np.array([0, 0, 1, 0, 1], dtype=np.int64),
            is_bid=np.array([True, True, True, False, False]),
            energy_kwh=np.array([2.0, 1.0, 0.5, 0.5, 2e-5]),
            rate=np.array([1.0, -1.0, 1.0, 1.0, 1.0]),
        ),
        commands=[
            (1, Bid(energy_kwh=0.1, rate=1, time_slot="s")),  # wrong side for -0.5
            (1, Offer(energy_kwh=0.6, rate=1, time_slot="s")),  # above the deviation
            (1, Offer(energy_kwh=0.5, rate=1, time_slot="s")),  # fine
        ],
    )
    reasons = [v.reason for v in order_violations(b, bad)]
    assert len(reasons) == 7
    assert len(platform_outbound(b, bad)) == 7, platform_outbound(b, bad)
    assert "above" in reasons[0] and "negative" in reasons[1] and "PV" in reasons[2]
    assert "LOAD" in reasons[3] and "not above" in reasons[4]
