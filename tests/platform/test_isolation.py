"""One aggregator's poisoned values never reach another aggregator's commands.

Two aggregators share the grid's markets (Grid, Community, the houses) and own different assets.
Aggregator A's tree is poisoned: a market fee of -1e6 or 1e308 on a shared market, a fee that is
valid but disagrees with B's tree, an energy of NaN or 1e308. B's commands must be byte-identical
to a round without A, whichever tree comes first (the first tree is where the Market Maker's way
is found), both in one process (``build_round``) and in a worker's shard (``flatten_parts``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest

from gridfleet.exchange.messages import TickEvent
from gridfleet.platform.evaluate import evaluate_shard
from gridfleet.platform.rounds import RoundInput, TreePart, build_round, flatten_parts
from gridfleet.strategies import registry
from gridfleet.strategies.base import AssetStrategy
from tests.conftest import load_example

TICK = load_example("05_event_tick")["data"]
RAMP = registry.build("linear_ramp", {})
assert isinstance(RAMP, AssetStrategy)


def _nodes(data: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    stack = [data["grid_tree"]]
    while stack:
        for node in stack.pop().values():
            found.append(node)
            stack.append(node.get("children") or {})
    return found


def _own_assets_renamed(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The same grid with the aggregator's own assets under other uuids (another aggregator)."""
    out = copy.deepcopy(data)
    stack = [out["grid_tree"]]
    while stack:
        nodes = stack.pop()
        for uid in list(nodes):
            node = nodes[uid]
            if node.get("asset_info"):
                nodes[prefix + uid] = nodes.pop(uid)
            elif node.get("children"):
                stack.append(node["children"])
    return out


def market(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in _nodes(data) if n.get("area_name") == name and "children" in n)


def asset(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in _nodes(data) if n.get("area_name") == name and n.get("asset_info"))


def fee(name: str, value: float) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        market(data, name)["current_market_fee"] = value

    return change


def energy(name: str, value: float) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        asset(data, name)["asset_info"]["energy_requirement_kWh"] = value

    return change


A, B = _own_assets_renamed(TICK, "a-"), _own_assets_renamed(TICK, "b-")

POISONS = {
    "grid fee -1e6": fee("Grid", -1e6),
    "community fee 1e308": fee("Community", 1e308),
    "grid fee 7 (valid, disagrees with B's 4)": fee("Grid", 7.0),
    "house fee -1e6": fee("Family 2 children+PV", -1e6),
    "energy 1e308": energy("Load 1 L13", 1e308),
    "energy NaN": energy("Load 1 L13", math.nan),
}


def event(data: dict[str, Any]) -> TickEvent:
    # convert, not JSON: NaN can only get in as an already-parsed value
    return msgspec.convert(data, TickEvent)


def b_commands(rnd_assets: Any, ctx: Any) -> bytes:
    out = evaluate_shard(ctx, rnd_assets, np.zeros(len(rnd_assets), np.int64), [RAMP], {})
    return out.fragments["agg-b"]


def one_process(events: list[tuple[str, dict[str, Any]]]) -> tuple[bytes, RoundInput]:
    rnd = build_round([(agg, event(data)) for agg, data in events])
    return b_commands(rnd.assets, rnd.ctx), rnd


def in_a_shard(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    rnd = build_round([(agg, event(data)) for agg, data in events if agg == "agg-b"])
    parts = [TreePart(agg, orjson.dumps(data["grid_tree"])) for agg, data in events]
    flat = flatten_parts(parts, {})
    return b_commands(flat.assets, rnd.ctx)


BASELINE, BASE_ROUND = one_process([("agg-b", B)])


def test_the_two_aggregators_share_markets_and_b_has_orders() -> None:
    assert BASELINE.count(b'"type":"bid"') >= 3
    assert {m["area_name"] for m in _nodes(A) if "children" in m} == {
        m["area_name"] for m in _nodes(B) if "children" in m
    }


@pytest.mark.parametrize("poison", list(POISONS))
@pytest.mark.parametrize("a_first", [True, False])
def test_a_poisoned_aggregator_leaves_the_others_commands_byte_identical(
    poison: str, a_first: bool
) -> None:
    bad = copy.deepcopy(A)
    POISONS[poison](bad)
    events = [("agg-a", bad), ("agg-b", B)] if a_first else [("agg-b", B), ("agg-a", bad)]
    got, rnd = one_process(events)
    assert got == BASELINE
    if "energy" not in poison and "valid" not in poison:
        # A fee the exchange cannot send: A's tree is not used at all, and says why.
        assert set(rnd.unusable) == {"agg-a"} and "current_market_fee" in rnd.unusable["agg-a"]
        assert set(rnd.assets.aggregator) == {"agg-b"}
    if "NaN" not in poison:  # JSON cannot carry NaN into a shard
        assert in_a_shard(events) == BASELINE


def test_trees_that_disagree_about_a_shared_fee_each_price_with_their_own() -> None:
    """Decided: an aggregator's assets are priced from its own tree (see platform/rounds.py)."""
    bad = copy.deepcopy(A)
    fee("Grid", 7.0)(bad)
    _, rnd = one_process([("agg-a", bad), ("agg-b", B)])
    fees = {
        (agg, name): f
        for agg, name, f in zip(
            rnd.assets.aggregator, rnd.assets.name, rnd.assets.grid_fee, strict=True
        )
    }
    # Grid and Community charge 4 ct/kWh each in the captured tree (the house none), and the
    # Market Maker hangs off Grid: the load pays Community + Grid on its way there.
    assert fees[("agg-b", "Load 1 L13")] == 4.0 + 4.0
    assert fees[("agg-a", "Load 1 L13")] == 4.0 + 7.0
