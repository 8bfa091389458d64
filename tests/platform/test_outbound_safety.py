"""Outbound safety as a property: whatever numbers an event carries, nothing the exchange dies on
or rejects is ever serialized.

The whole path runs: a captured tick/market event with adversarial values put into it (1e308,
-1e308, subnormals, -0.0, NaN and infinities, huge and negative fees, negative energies, zero
rates), parsed (from JSON bytes, and as an already-parsed structure, which is how NaN and
infinities get in: JSON cannot carry them), flattened into a round, evaluated by every built-in
asset strategy and grid-fee strategy, validated, joined into the ``batch_commands`` bytes the
coordinator sends, and those bytes parsed back and checked command by command.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import msgspec
import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridfleet.exchange.messages import MarketEvent, ProtocolError, TickEvent, decode_event
from gridfleet.exchange.outbound import ORDER_KEYS
from gridfleet.exchange.rules import MIN_ORDER_ENERGY_KWH, OFFER_TOLERANCE_KWH
from gridfleet.platform.evaluate import evaluate_shard, merge_fragments
from gridfleet.platform.rounds import RoundError, RoundInput, build_round
from gridfleet.strategies import registry
from gridfleet.strategies.base import AssetStrategy, MarketStrategy
from gridfleet.strategies.bounds import (
    MAX_ORDER_ENERGY_KWH,
    MAX_ORDER_PRICE_CT,
    MAX_RATE_CT_PER_KWH,
)
from gridfleet.strategies.context import AssetKind
from tests.conftest import load_example
from tests.strategies.helpers import STRATEGY_DATA

TICK = load_example("05_event_tick")["data"]
MARKET = load_example("05_event_market")["data"]
AGG = "agg-under-test"

ASSET_STRATEGIES: list[AssetStrategy] = [
    registry.build(name, params)  # type: ignore[misc]
    for name, params in [
        ("linear_ramp", {}),
        ("linear_ramp_per_asset", {}),
        ("fixed_rate", {"rate": 0, "offer_rate": 31.5}),
        ("fixed_rate", {"rate": MAX_RATE_CT_PER_KWH}),
        ("settlement", {"bid_rate": 0, "post_on_ticks": True}),
        (
            "requirements",
            {
                "path": str(STRATEGY_DATA / "requirements.json"),
                "post_on_ticks": True,
                "known_assets": {"PV 9 (15kW)": "uuid-pv9", "PV 5 (10kW)": "uuid-pv5"},
            },
        ),
        ("composite", {"strategies": [{"name": "settlement"}, {"name": "linear_ramp"}]}),
    ]
]
MARKET_STRATEGIES: list[MarketStrategy] = [
    registry.build("grid_fee_constant", {"fee_const": 3.5}),  # type: ignore[list-item]
    registry.build("grid_fee_percent", {"fee_percent": 100}),  # type: ignore[list-item]
]

# The values an event from a broken or hostile exchange may carry.
EXTREMES = [
    1e308,
    -1e308,
    5e-324,
    -5e-324,
    -0.0,
    0.0,
    math.nan,
    math.inf,
    -math.inf,
    MIN_ORDER_ENERGY_KWH,
    2.00001e-5,
    MAX_ORDER_ENERGY_KWH,
    MAX_ORDER_ENERGY_KWH * (1 + 1e-15),
    -1.0,
    -1e6,
    1e-300,
]
number = st.one_of(
    st.sampled_from(EXTREMES),
    st.floats(min_value=-10, max_value=1000),
    st.floats(allow_nan=True, allow_infinity=True),
)
# Fees the exchange can send (a tree with any other is refused whole: see test_isolation.py)...
valid_fee = st.one_of(
    st.none(),
    st.sampled_from([0, 4, 0.0, -0.0, 5e-324, MAX_RATE_CT_PER_KWH]),
    st.floats(min_value=0, max_value=100),
)
# ...and any fee at all.
fee = st.one_of(valid_fee, number, st.sampled_from([1e308, -1e6]))
ENERGY_KEYS = (
    "energy_requirement_kWh",
    "available_energy_kWh",
    "energy_to_buy",
    "energy_to_sell",
    "used_storage",
    "free_storage",
)


def poison(data: dict[str, Any], draw: Any, spot_slot: str) -> dict[str, Any]:
    """A deep copy of an event with drawn values in every fee, energy and rate it carries.

    Every other event has only fees the exchange can send, so that its assets get evaluated.
    """
    out = copy.deepcopy(data)
    fees = fee if draw(st.booleans()) else valid_fee
    out["feed_in_tariff_rate"] = draw(number)
    out["market_maker_rate"] = draw(number)
    out["slot_completion"] = draw(st.sampled_from(["0%", "30%", "80%", "90%"]))

    def walk(nodes: dict[str, Any]) -> None:
        for node in nodes.values():
            if "children" in node:
                node["current_market_fee"] = draw(fees)
                node["last_market_fee"] = draw(fees)
                walk(node["children"])
            info = node.get("asset_info")
            if isinstance(info, dict):
                for key in ENERGY_KEYS:
                    if key in info:
                        info[key] = draw(number)
                if draw(st.booleans()):
                    slots = st.sampled_from([spot_slot, "2024-06-01T00:00", "2099-01-01T00:00"])
                    info["unsettled_deviation_kWh"] = draw(st.dictionaries(slots, number))

    walk(out["grid_tree"])
    return out


def parse(data: dict[str, Any], from_json: bool) -> MarketEvent | TickEvent | None:
    """The event as the platform gets it; None if the decoder refuses it (a fine outcome)."""
    try:
        if from_json:
            event = decode_event(orjson.dumps(data))  # NaN/inf become null in JSON
        else:
            event = msgspec.convert(data, MarketEvent | TickEvent)
    except (ProtocolError, msgspec.ValidationError):
        return None
    assert isinstance(event, MarketEvent | TickEvent)
    return event


def wire_commands(rnd: RoundInput) -> dict[str, list[dict[str, Any]]]:
    """Every built-in strategy on the round; the ``batch_commands`` bytes parsed back."""
    out: dict[str, list[dict[str, Any]]] = {}
    n = len(rnd.assets)
    for k in range(len(ASSET_STRATEGIES)):
        market_index = [k % len(MARKET_STRATEGIES)] * len(rnd.markets)
        shard = evaluate_shard(
            rnd.ctx,
            rnd.assets,
            np.full(n, k, dtype=np.int64),
            ASSET_STRATEGIES,
            {},
            rnd.markets,
            market_index,
            MARKET_STRATEGIES,
        )
        wire = merge_fragments([shard.fragments.get(AGG, b"")])
        parsed = orjson.loads(wire)  # strict JSON: no NaN/Infinity tokens either
        assert isinstance(parsed, dict)
        for uuid, commands in parsed.items():
            out.setdefault(uuid, []).extend(commands)
    return out


def _no_nulls(value: Any, where: str) -> None:
    # orjson writes inf and NaN as null: no command gridfleet builds has a null anywhere.
    assert value is not None, f"null at {where}"
    if isinstance(value, dict):
        for key, item in value.items():
            _no_nulls(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_nulls(item, f"{where}[{i}]")
    elif isinstance(value, float):
        assert math.isfinite(value), f"{value} at {where}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_command(command: dict[str, Any], rnd: RoundInput, row: int | None) -> None:
    """Nothing that kills the exchange (``11_CRASH_*``) or that it rejects by rule."""
    _no_nulls(command, command.get("type", "?"))
    ctype = command["type"]
    if ctype not in ("bid", "offer"):
        if ctype == "grid_fees":
            (value,) = command["data"].values()
            assert _is_number(value) and 0 <= value <= MAX_RATE_CT_PER_KWH
        return
    assert row is not None, "an order for something that is not one of the round's assets"
    assert set(command) <= ORDER_KEYS, command
    energy, price = command["energy"], command["price"]
    assert _is_number(energy) and _is_number(price), command
    assert math.isfinite(energy) and math.isfinite(price), command
    assert price >= 0 and math.copysign(1.0, price) > 0, command  # no -0.0 either
    assert MIN_ORDER_ENERGY_KWH < energy <= MAX_ORDER_ENERGY_KWH, command
    assert price <= MAX_ORDER_PRICE_CT and price <= MAX_RATE_CT_PER_KWH * energy, command
    a = rnd.assets
    kind = AssetKind(int(a.kind[row]))
    slot = command.get("time_slot")
    if slot is not None and slot != rnd.ctx.market_slot:
        deviation = (a.unsettled_deviation_kwh[row] if a.unsettled_deviation_kwh else None) or {}
        assert slot in deviation, f"time_slot {slot} is not an open market"
        cap = abs(deviation[slot])
        assert (deviation[slot] > 0) == (ctype == "bid"), command
        assert energy <= cap + (OFFER_TOLERANCE_KWH if ctype == "offer" else 0.0), command
        return
    if ctype == "bid":
        assert kind is not AssetKind.PV
        cap = (
            a.energy_to_buy_kwh[row] if kind is AssetKind.STORAGE else a.energy_requirement_kwh[row]
        )
        assert energy <= cap, (command, float(cap))
    else:
        assert kind is not AssetKind.LOAD
        cap = (
            a.energy_to_sell_kwh[row] if kind is AssetKind.STORAGE else a.available_energy_kwh[row]
        )
        assert energy <= cap + OFFER_TOLERANCE_KWH, (command, float(cap))


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.data(),
    market_event=st.booleans(),
    from_json=st.booleans(),
    own_markets=st.booleans(),
)
def test_no_adversarial_event_value_makes_a_refused_or_crashing_command_reach_the_wire(
    data: st.DataObject, market_event: bool, from_json: bool, own_markets: bool
) -> None:
    base = MARKET if market_event else TICK
    raw = poison(base, data.draw, base["market_slot"])
    event = parse(raw, from_json)
    if event is None:
        return
    markets = frozenset(u for u in event.grid_tree) if own_markets else frozenset()
    try:
        rnd = build_round([(AGG, event)], {AGG: markets})
    except RoundError:
        return  # null rates: the round is skipped and counted, nothing is sent
    rows = {uuid: i for i, uuid in enumerate(rnd.assets.uuid)}
    for uuid, commands in wire_commands(rnd).items():
        for command in commands:
            check_command(command, rnd, rows.get(uuid))


def test_an_overflowing_price_is_refused_by_name_not_sent_as_null() -> None:
    """The issue's case: 1e308 kWh x a finite rate is inf, which JSON would carry as null."""
    raw = copy.deepcopy(TICK)
    (root,) = raw["grid_tree"].values()
    community = next(iter(root["children"].values()))
    house = next(iter(community["children"].values()))
    load = next(n for n in house["children"].values() if n["area_name"] == "Load 1 L13")
    load["asset_info"]["energy_requirement_kWh"] = 1e308
    rnd = build_round([(AGG, parse(raw, from_json=True))])  # type: ignore[list-item]
    ramp = registry.build("linear_ramp", {})
    assert isinstance(ramp, AssetStrategy)
    out = evaluate_shard(rnd.ctx, rnd.assets, np.zeros(len(rnd.assets), np.int64), [ramp], {})
    refused = [r for r in out.refusals if r.asset == load_uuid(raw, "Load 1 L13")]
    assert len(refused) == 1 and "finite" in refused[0].reason, out.refusals
    assert refused[0].aggregator == AGG and refused[0].command == "bid"
    assert b"null" not in out.fragments[AGG]
    assert load_uuid(raw, "Load 1 L13").encode() not in out.fragments[AGG]
    assert len(orjson.loads(merge_fragments([out.fragments[AGG]]))) > 0  # the others go out


def load_uuid(data: dict[str, Any], name: str) -> str:
    def walk(nodes: dict[str, Any]) -> str | None:
        for uid, node in nodes.items():
            if node.get("area_name") == name:
                return uid
            found = walk(node.get("children") or {})
            if found:
                return found
        return None

    found = walk(data["grid_tree"])
    assert found is not None
    return found


# -- settlement orders through the whole path: a closed or unparsable time_slot never leaves ---

SPOT_SLOT = "2024-06-01T12:00"
SETTLEMENT_SLOTS = ["2024-06-01T11:00", "2024-06-01T11:15", "2024-06-01T11:30", "2024-06-01T11:45"]
ANY_SLOT = st.one_of(
    st.none(),
    st.sampled_from(
        [
            SPOT_SLOT,
            *SETTLEMENT_SLOTS,
            "2024-06-01T10:45",  # closed an hour after its slot (probe 21 kills gsy-e)
            "2024-06-01T12:15",  # the future: no future markets
            "11:15",  # time-only: gsy-e takes today's date
            "2024-06-01T11:15:00",  # with seconds: parsed by gsy-e, but not the label it sent
            "2024-06-01T11:15:00+00:00",  # an offset: not accepted
            "not-a-slot",  # probe 22 kills gsy-e with it
            "",
        ]
    ),
    st.text(max_size=24),
)


class _SlotSpray(AssetStrategy):
    """Sends whatever (side, energy, time_slot) hypothesis drew, one order per asset."""

    name = "slot_spray"

    def __init__(self, orders: list[tuple[bool, float, str | None]]) -> None:
        super().__init__()
        self.orders = orders

    def on_market(self, ctx: Any, assets: Any, state: Any) -> Any:
        from gridfleet.strategies.commands import Bid, Offer, StrategyResult

        result = StrategyResult()
        for row, (is_bid, energy, slot) in enumerate(self.orders[: len(assets)]):
            order = Bid if is_bid else Offer
            result.commands.append((row, order(energy_kwh=energy, rate=10.0, time_slot=slot)))
        return result

    on_tick = on_market


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["load", "pv"]),
            st.dictionaries(
                st.sampled_from(SETTLEMENT_SLOTS),
                st.floats(min_value=-3.0, max_value=3.0, allow_nan=False),
                max_size=4,
            ),
            st.booleans(),
            st.floats(min_value=0.0, max_value=4.0, allow_nan=False),
            ANY_SLOT,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_no_settlement_order_naming_a_closed_or_unparsable_slot_is_ever_serialized(
    rows: list[tuple[str, dict[str, float], bool, float, str | None]],
) -> None:
    from gridfleet.testing import asset_batch, tick_context

    batch = asset_batch(
        [
            {"kind": kind, "aggregator": AGG, "unsettled_deviation_kwh": dev or None}
            for kind, dev, _, _, _ in rows
        ]
    )
    strategy = _SlotSpray([(b, e, s) for _, _, b, e, s in rows])
    shard = evaluate_shard(
        tick_context(market_slot=SPOT_SLOT), batch, np.zeros(len(rows), np.int64), [strategy], {}
    )
    wire = orjson.loads(merge_fragments([shard.fragments.get(AGG, b"")]))
    by_uuid = dict(zip(batch.uuid, rows, strict=True))
    for uuid, commands in wire.items():
        _, dev, _, _, _ = by_uuid[uuid]
        for cmd in commands:
            slot = cmd.get("time_slot")
            if slot is None or slot == SPOT_SLOT:
                continue
            # a settlement order: only an open market the exchange showed for this asset, in
            # the deviation's direction, for at most the deviation
            assert slot in dev, (slot, dev)
            assert (dev[slot] > 0) if cmd["type"] == "bid" else (dev[slot] < 0)
            assert cmd["energy"] <= abs(dev[slot]) + OFFER_TOLERANCE_KWH
