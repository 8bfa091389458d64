"""The lean tree model (``rounds._LeanNode``) flattens to exactly what the wire model does: the
same rows (bit for bit), markets, remembered fees and, for a tree either refuses, the same reason.
Differential, on generated trees: valid, poisoned (fees) and malformed (types, JSON)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridfleet.platform import rounds
from gridfleet.platform.rounds import FlatParts, TreePart, flatten_parts

UIDS = st.sampled_from([f"u{i}" for i in range(30)]) | st.text(min_size=1, max_size=4)
NAMES = st.sampled_from(["H1 Load", "PV", "Market Maker", "House 1"]) | st.text(max_size=4)
NUMBER = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(10**20), 10**20)
    | st.sampled_from([0.0, -0.0, -1e-9, 1e6, 1e6 + 1, 0.5])
)
ODD: st.SearchStrategy[Any] = st.sampled_from(
    ["x", True, None, [], {}]
)  # values the models refuse somewhere
INFO_KEYS = [
    "energy_requirement_kWh",
    "available_energy_kWh",
    "energy_to_buy",
    "energy_to_sell",
    "used_storage",
    "free_storage",
    "energy_active_in_bids",
    "energy_traded",
]


def maybe_odd(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``value``; one time in 60 a value of another type (the tree is then refused)."""
    return st.integers(0, 59).flatmap(lambda i: ODD if i == 0 else value)


FEE = st.integers(0, 9).flatmap(lambda i: NUMBER if i == 0 else st.floats(0, 50) | st.none())


info = st.fixed_dictionaries(
    {},
    optional={
        **{k: maybe_odd(NUMBER) for k in INFO_KEYS},
        "unsettled_deviation_kWh": maybe_odd(
            st.none() | st.dictionaries(st.text(max_size=3), NUMBER | st.none(), max_size=3)
        ),
    },
)
asset = st.fixed_dictionaries(
    {"asset_info": maybe_odd(info), "area_name": NAMES},
    optional={
        "last_slot_asset_info": maybe_odd(st.just({"energy_traded": 0.0, "x": [1, {"y": None}]})),
        "asset_bill": maybe_odd(st.none()),
    },
)
plain_leaf = st.fixed_dictionaries({"area_name": NAMES})


def market(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"area_name": NAMES, "children": children},
        optional={
            "current_market_fee": maybe_odd(FEE),
            "last_market_fee": maybe_odd(FEE),
            "last_market_stats": maybe_odd(
                st.none() | st.fixed_dictionaries({}, optional={"min_trade_rate": NUMBER})
            ),
            "last_market_bill": maybe_odd(st.just({"accumulated_trades": {}})),
        },
    )


nodes = st.recursive(
    st.dictionaries(UIDS, asset | plain_leaf, max_size=4),
    lambda kids: st.dictionaries(UIDS, market(kids) | asset | plain_leaf, min_size=1, max_size=4),
    max_leaves=24,
)


@st.composite
def shards(draw: st.DrawFn) -> tuple[list[TreePart], dict[str, frozenset[str]], dict, bool, int]:
    parts = []
    for i in range(draw(st.integers(1, 4))):
        raw = json.dumps(draw(nodes)).encode()
        if draw(st.integers(0, 29)) == 0:
            raw = raw[: draw(st.integers(0, len(raw)))]  # not JSON any more
        start, stop = draw(st.sampled_from([(0, None), (0, 2), (1, None), (2, 5)]))
        parts.append(TreePart(f"agg{draw(st.integers(0, i))}", raw, start, stop))
    aggs = {p.aggregator for p in parts}
    own = {a: frozenset(draw(st.lists(UIDS, max_size=8))) for a in aggs}
    fees = {a: draw(st.dictionaries(UIDS, NUMBER, max_size=3)) for a in aggs if draw(st.booleans())}
    # Trees from this size on go the wire model's way (a reference to cut others from).
    cut_at = draw(st.sampled_from([1 << 62, *(len(p.tree) for p in parts)]))
    return parts, own, fees, draw(st.booleans()), cut_at


def assert_same(a: FlatParts, b: FlatParts) -> None:
    for name in a.assets.__slots__:
        x, y = getattr(a.assets, name), getattr(b.assets, name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
        else:
            assert x == y, name
    assert a.markets == b.markets
    assert list(a.unusable.items()) == list(b.unusable.items())
    assert list(a.slot_fees.items()) == list(b.slot_fees.items())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shards())
def test_lean_trees_flatten_as_the_wire_model_does(
    shard: tuple[list[TreePart], dict[str, frozenset[str]], dict, bool, int],
) -> None:
    parts, own, fees, record, cut_at = shard
    saved = rounds.CUT_MIN_BYTES
    rounds.CUT_MIN_BYTES = cut_at
    try:
        lean = flatten_parts(parts, own, fees, record)
        wire = flatten_parts(parts, own, fees, record, lean=False)
    finally:
        rounds.CUT_MIN_BYTES = saved
    assert_same(lean, wire)


def test_a_real_round_flattens_the_same_and_finds_its_assets() -> None:
    tree = {
        "g": {
            "area_name": "Grid",
            "current_market_fee": 1.0,
            "children": {
                "mm": {"area_name": "Market Maker"},
                "h": {
                    "area_name": "House 1",
                    "current_market_fee": None,
                    "children": {
                        "l": {"asset_info": {"energy_requirement_kWh": 0.5}, "area_name": "L"},
                        "p": {"asset_info": {"available_energy_kWh": 0.25}, "area_name": "P"},
                        "s": {
                            "asset_info": {"energy_to_buy": 1, "energy_to_sell": -0.0},
                            "area_name": "S",
                        },
                        "o": {"area_name": "Another's"},
                    },
                },
            },
        }
    }
    parts = [TreePart("a", json.dumps(tree).encode())]
    lean = flatten_parts(parts, {"a": frozenset({"h"})}, record=True)
    assert_same(lean, flatten_parts(parts, {"a": frozenset({"h"})}, record=True, lean=False))
    assert lean.assets.uuid == ["l", "p", "s"] and lean.assets.kind.tolist() == [0, 1, 2]
    assert [m.uuid for m in lean.markets] == ["h"] and lean.slot_fees == {"a": {"h": 1.0}}
