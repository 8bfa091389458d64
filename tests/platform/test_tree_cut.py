"""Full trees cut from the shard's first one (``gridfleet.platform.tree_cut``) flatten to exactly
what decoding each tree whole gives: rows, fees, markets, remembered fees, and the same reason
when a tree is unusable. Trees that do not match the first fall back to the whole decode."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridfleet.exchange.messages import GridTree, decode, decode_event, decode_event_for_ingress
from gridfleet.platform import rounds
from gridfleet.platform.rounds import (
    FlatParts,
    SlotFees,
    TreePart,
    build_round,
    build_round_from_heads,
    flatten_parts,
)
from gridfleet.platform.tree_cut import Reference, own_leaves
from gridfleet.simulator.events import EventBuilder
from gridfleet.simulator.grid import assign_aggregators, generate_grid
from gridfleet.simulator.state import ExchangeState


def full_trees(assets: int, aggregators: int, seed: int, gsy_e_style: bool) -> dict[str, bytes]:
    """Each aggregator's full ``grid_tree``, compact as the embedded exchange writes it, or
    with gsy-e's ", " and ": " (json.dumps' defaults, key order kept)."""
    g = generate_grid(assets, houses_size=10, seed=seed)
    fleet = assign_aggregators(g, aggregators)
    state = ExchangeState(g, timedelta(minutes=15), datetime(2024, 6, 1, 12))
    state.open_slot(1)
    ev = EventBuilder(g, "full")
    ev.refresh_heads(state)
    out = {}
    for name, spec in fleet.items():
        own = [g.asset_name.index(n) for n in spec["assets"]]
        ev.template(name, own)
        ev.refresh_own_leaves(state, own)
        tree = ev.tree(name)
        out[name] = json.dumps(json.loads(tree)).encode() if gsy_e_style else tree
    return out


def flat(parts: list[TreePart], cut: bool, **kw: Any) -> FlatParts:
    saved = rounds.CUT_MIN_BYTES
    rounds.CUT_MIN_BYTES = 0 if cut else 1 << 62
    try:
        return flatten_parts(parts, **kw)
    finally:
        rounds.CUT_MIN_BYTES = saved


def assert_same(a: FlatParts, b: FlatParts) -> None:
    for f in dataclasses.fields(a.assets):
        x, y = getattr(a.assets, f.name), getattr(b.assets, f.name)
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y), f.name
        else:
            assert x == y, f.name
    assert a.markets == b.markets
    assert a.unusable == b.unusable
    assert a.slot_fees == b.slot_fees


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    assets=st.integers(60, 400),
    aggregators=st.integers(2, 6),
    seed=st.integers(0, 5),
    gsy_e_style=st.booleans(),
    record=st.booleans(),
    data=st.data(),
)
def test_cut_trees_flatten_as_whole_trees(
    assets: int, aggregators: int, seed: int, gsy_e_style: bool, record: bool, data: Any
) -> None:
    trees = full_trees(assets, aggregators, seed, gsy_e_style)
    names = list(trees)
    parts = [TreePart(n, trees[n]) for n in names]
    if data.draw(st.booleans()):  # the last aggregator split: this shard takes its middle rows
        parts[-1] = TreePart(
            names[-1], trees[names[-1]], start=1, stop=data.draw(st.integers(2, 9))
        )
    markets = [u for u in json.loads(trees[names[0]]) if u]  # the root: a market everyone sees
    own_markets = {names[0]: frozenset(markets)}
    slot_fees = {names[1]: {markets[0]: 7.5}} if data.draw(st.booleans()) else None
    kw = {"own_markets": own_markets, "slot_fees": slot_fees, "record": record}
    assert_same(flat(parts, cut=True, **kw), flat(parts, cut=False, **kw))


def test_trees_that_differ_from_the_first_are_decoded_whole() -> None:
    trees = full_trees(300, 4, 1, gsy_e_style=True)
    names = list(trees)
    first = trees[names[0]]
    # another fee in a market: not the first tree's markets, decoded whole (and its fee used)
    changed = re.sub(
        rb'"current_market_fee": [0-9.]+', b'"current_market_fee": 2.25', trees[names[1]], count=1
    )
    assert changed != trees[names[1]]
    # an own leaf that does not decode: the whole decode names the problem
    broken = trees[names[2]].replace(
        b'"asset_info": {"', b'"asset_info": {"energy_requirement_kWh": "x", "', 1
    )
    # another key order: area_name first
    leaves = own_leaves(trees[names[3]])
    assert leaves
    reordered = trees[names[3]].replace(
        b'{"asset_info"', b'{"area_name": "renamed", "asset_info"', 1
    )
    parts = [TreePart(names[0], first), TreePart(names[1], changed), TreePart(names[2], broken),
             TreePart(names[3], reordered)]  # fmt: skip
    cut, whole = flat(parts, cut=True, own_markets={}), flat(parts, cut=False, own_markets={})
    assert_same(cut, whole)
    assert list(whole.unusable) == [names[2]]


def test_a_poisoned_market_fee_makes_every_tree_with_it_unusable_the_same_way() -> None:
    trees = full_trees(200, 3, 2, gsy_e_style=False)
    poisoned = {
        n: re.sub(rb'"current_market_fee":[0-9.]+', b'"current_market_fee":-5', t, count=1)
        for n, t in trees.items()
    }
    assert all(poisoned[n] != trees[n] for n in trees)
    parts = [TreePart(n, t) for n, t in poisoned.items()]
    cut, whole = flat(parts, cut=True, own_markets={}), flat(parts, cut=False, own_markets={})
    assert_same(cut, whole)
    assert set(whole.unusable) == set(trees) and len(set(whole.unusable.values())) == 1


@pytest.mark.parametrize("gsy_e_style", [False, True])
def test_own_leaves_are_found_with_their_names(gsy_e_style: bool) -> None:
    trees = full_trees(100, 2, 0, gsy_e_style)
    for tree in trees.values():
        leaves = own_leaves(tree)
        assert leaves is not None and len(leaves) > 0
        for leaf in leaves:
            node = json.loads(tree[leaf.start : leaf.end])
            assert "asset_info" in node and tree[leaf.cut :].startswith(b'"area_name"')


@pytest.mark.parametrize("gsy_e_style", [False, True])
def test_every_tree_of_a_round_is_cut_from_the_first(gsy_e_style: bool) -> None:
    """The fast path is the one taken: each further tree matches the first and is cut to its
    own leaves and the markets above them."""
    trees = list(full_trees(300, 5, 3, gsy_e_style).values())
    ref = Reference.of(trees[0], decode(trees[0], GridTree))
    assert ref is not None
    for tree in trees[1:]:
        small = ref.cut(tree, frozenset(), None)
        assert small is not None
        leaves = own_leaves(tree)
        assert leaves is not None
        walked: list[str] = []
        stack = [small]
        while stack:
            for uid, node in stack.pop().items():
                walked.append(uid)
                if isinstance(node.children, dict):
                    stack.append(node.children)
        assert {leaf.uid for leaf in leaves} <= set(walked) and len(walked) < len(ref.place) / 2


def test_without_a_market_maker_both_ways_price_alike() -> None:
    trees = {
        n: t.replace(b'"Market Maker"', b'"Grid Operator"')
        for n, t in full_trees(200, 3, 4, False).items()
    }
    parts = [TreePart(n, t) for n, t in trees.items()]
    assert_same(flat(parts, cut=True, own_markets={}), flat(parts, cut=False, own_markets={}))


@pytest.mark.parametrize("mode", ["full", "pruned"])
def test_the_one_process_loop_builds_rounds_as_the_whole_decode_does(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``build_round_from_heads`` (the single-process loop: raw trees, flattened as a shard)
    equals ``build_round`` (every event decoded whole) over a market event and a tick of its
    slot, fees remembered in between (trees cut from the first however small)."""
    monkeypatch.setattr(rounds, "CUT_MIN_BYTES", 0)
    g = generate_grid(300, houses_size=10, seed=5)
    fleet = assign_aggregators(g, 4)
    state = ExchangeState(g, timedelta(minutes=15), datetime(2024, 6, 1, 12))
    state.open_slot(1)
    ev = EventBuilder(g, mode)  # type: ignore[arg-type]
    ev.refresh_heads(state)
    raws: dict[str, list[bytes]] = {}
    for name, spec in fleet.items():
        own = [g.asset_name.index(n) for n in spec["assets"]]
        ev.template(name, own)
        ev.refresh_own_leaves(state, own)
        raws[name] = [
            ev.envelope(kind, state.market_slot, tick, ev.tree(name), 10.0, 30.0).join()
            for kind, tick in (("market", 0), ("tick", 1))
        ]
    own_markets = {name: frozenset(list(json.loads(ev.tree(name)))[:1]) for name in fleet}
    memories = (SlotFees(), SlotFees())
    for i in range(2):
        whole = build_round(
            [(a, decode_event(r[i])) for a, r in raws.items()], own_markets, memory=memories[0]
        )  # type: ignore[misc]
        heads = build_round_from_heads(
            [(a, decode_event_for_ingress(r[i])) for a, r in raws.items()],  # type: ignore[misc]
            own_markets,
            memory=memories[1],
        )
        assert (whole.key, whole.ctx, whole.aggregators) == (
            heads.key,
            heads.ctx,
            heads.aggregators,
        )
        assert_same(
            FlatParts(whole.assets, whole.markets, whole.unusable, whole.slot_fees),
            FlatParts(heads.assets, heads.markets, heads.unusable, heads.slot_fees),
        )
        assert len(whole.assets) == 300
