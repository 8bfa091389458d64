"""The bulk pieces of the batch fast path and of tree leaves, each against its one-at-a-time
definition, over wide inputs (hypothesis):

- ``_bulk_plan`` (the shape checks of a whole chunk as columns) against ``_device_plan`` (the
  same checks command by command);
- the byte renderers of ``numfmt`` against ``repr`` / ``format``;
- tree leaves with numbers rendered in bulk against the frozen original
  (``tests/simulator/reference/events_v1.py``);
- ``respond_many`` over many batches of one chunk (several fast batches, mixed ones, rejections)
  against the general path, byte for byte.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gridfleet.simulator.arrow_text import floats
from gridfleet.simulator.batch import ASSET, MARKET, BatchHandler, _bulk_plan, _device_plan
from gridfleet.simulator.events import EventBuilder
from gridfleet.simulator.grid import generate_grid
from gridfleet.simulator.numfmt import hex12s, reprs_b, reprs_f64
from gridfleet.simulator.state import ExchangeState
from tests.simulator.reference import events_v1
from tests.simulator.test_batch_fast import SLOT, START, Twin, _batch

GRID = generate_grid(40, houses_size=10, seed=1)
SLOT_NOW = "2024-06-01T11:30"

_odd_values = st.sampled_from(
    [None, True, False, 0, 1, -1, 2**53, 2**53 - 1, -(2**53) + 1, 2**70, "0.1", [0.1], {}, math.nan]
)
_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 5),
    st.integers(-(2**60), 2**60),
    _odd_values,
)


@st.composite
def _command(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from(["bid", 5, None, [], ["bid"]]))
    cmd: dict[str, Any] = {}
    r = draw(st.integers(0, 20))
    if r:
        cmd["type"] = (
            draw(st.sampled_from(["bid", "offer"]))
            if r > 2
            else draw(st.sampled_from(["delete_bid", "list_offers", "Bid", 1, None]))
        )
    for key in ("energy", "price"):
        if draw(st.integers(0, 15)):
            cmd[key] = draw(_numbers)
    if draw(st.booleans()):
        cmd["replace_existing"] = draw(st.sampled_from([True, False, None, 0, 1, "no", []]))
    if draw(st.integers(0, 3)) == 0:
        cmd["time_slot"] = draw(
            st.sampled_from(
                [SLOT_NOW, SLOT_NOW + ":00", "2024-06-01T11:15", None, 5, [SLOT_NOW], SLOT_NOW[:10]]
            )
        )
    if draw(st.integers(0, 20)) == 0:
        cmd["transaction_id"] = "inner"
    if draw(st.integers(0, 30)) == 0:
        cmd["attributes"] = {}
    return cmd


@st.composite
def _devices(draw: st.DrawFn) -> tuple[list[Any], list[int], list[int]]:
    n = draw(st.integers(0, 25))
    vals: list[Any] = []
    kinds: list[int] = []
    idx: list[int] = []
    for _ in range(n):
        kind = MARKET if draw(st.integers(0, 12)) == 0 else ASSET
        kinds.append(kind)
        idx.append(draw(st.integers(0, GRID.n_assets - 1)))
        if draw(st.integers(0, 15)) == 0:
            vals.append(draw(_command()))  # a lone command, not in a list
        else:
            vals.append(draw(st.lists(_command(), min_size=0, max_size=3)))
    return vals, kinds, idx


@settings(max_examples=400, deadline=None)
@given(_devices(), st.booleans())
def test_bulk_plan_equals_the_device_plan(
    devices: tuple[list[Any], list[int], list[int]], closing: bool
) -> None:
    vals, kinds, idx = devices
    uuids = [f"d{i}" for i in range(len(vals))]
    commands = dict(zip(uuids, vals, strict=True))
    mine = [(u, (k, a)) for u, k, a in zip(uuids, kinds, idx, strict=True)]
    cand: list[Any] = []
    want = _device_plan(mine, commands, GRID.kind_list, cand, SLOT_NOW, closing)
    got_vals, lens, starts, c = _bulk_plan(list(vals), kinds, idx, GRID.kind, SLOT_NOW, closing)
    assert [d[3] for d in want] == got_vals
    assert lens.tolist() == [len(d[3]) for d in want]
    assert starts.tolist() == [d[4] for d in want]
    assert c.m == len(cand)
    if cand:
        a, is_b, e, p, rep, late = zip(*cand, strict=True)
        assert c.idx.tolist() == list(a)
        assert c.is_b.tolist() == list(is_b)
        assert c.en.tolist() == [float(x) for x in e]
        assert c.pr.tolist() == [float(x) for x in p]
        assert all(x is y for x, y in zip(c.prices, p, strict=True))
        assert c.int_price == any(type(x) is int for x in p)
        assert c.rep.tolist() == list(rep)
        assert c.late.tolist() == list(late)
        # each candidate's device and its place in the device's list
        for j, d in enumerate(c.dev.tolist()):
            assert want[d][4] <= j < want[d][4] + len(want[d][3])
            assert c.q[j] == j - want[d][4]
            assert c.first[j] == (c.q[j] == 0)
            assert c.last[j] == (c.q[j] == len(want[d][3]) - 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
def test_byte_renderers_equal_repr(values: list[float]) -> None:
    want = [repr(v).encode() for v in values]
    assert reprs_f64(np.array(values, dtype=np.float64)) == want
    assert floats(np.array(values, dtype=np.float64)).to_pylist() == want
    assert reprs_b(values) == want
    mixed: list[Any] = [int(v) if math.isfinite(v) and abs(v) < 2**53 else v for v in values]
    assert reprs_b(mixed) == [repr(v).encode() for v in mixed]


def test_byte_renderers_on_the_hard_cases() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        (
            rng.uniform(0, 40, 20000),
            rng.uniform(0, 1, 4000) * 10.0 ** rng.integers(-12, 22, 4000),
            [0.0, -0.0, 1e-4, 9.99999999e-05, 1e16, 9.999999999999998e15, 1e300, 5e-324],
            [math.inf, -math.inf, math.nan],
        )
    )
    assert reprs_f64(x) == [repr(v).encode() for v in x.tolist()]
    assert floats(x).to_pylist() == reprs_f64(x)
    ids = np.array([0, 1, 255, 2**47 - 1, 123456789, 16**12 - 1])
    assert hex12s(ids).tolist() == [f"{v:012x}".encode() for v in ids.tolist()]
    assert reprs_f64(np.zeros(0)) == [] and reprs_b([]) == []
    assert floats(np.zeros(0)).to_pylist() == []


def test_a_chunk_of_many_batches_equals_the_general_path() -> None:
    rng = random.Random(7)
    tw = Twin(3)
    ids: list[str] = []
    for tick in range(10):
        tw.set_time(tick)
        # batches of disjoint assets (a chunk of many aggregators), fast-path shapes mostly
        assets = list(range(tw.grid.n_assets))
        rng.shuffle(assets)
        batches = []
        for part in range(4):
            mine = set(assets[part::4])
            b = _batch(rng, tw, ids, tick)
            b["batch_commands"] = {
                u: v
                for u, v in b["batch_commands"].items()
                if u not in tw.devices or tw.devices[u][0] != ASSET or tw.devices[u][1] in mine
            }
            batches.append(b)
        tw.apply_many(batches)
        tw.match()


def test_the_common_shape_in_bulk_is_the_general_path_byte_for_byte() -> None:
    """Many aggregators, every asset a bid and/or an offer (the benchmark's shape), some
    rejected, some with int prices, some naming the slot: one chunk through the fast path
    against the general path."""
    grid = generate_grid(400, houses_size=10, seed=5)
    devices = {u: (ASSET, i) for i, u in enumerate(grid.asset_uuid)}
    devices.update({m.uuid: (MARKET, m.index) for m in grid.markets})
    states = [ExchangeState(grid, SLOT, START) for _ in range(2)]
    handlers = [BatchHandler(s, devices) for s in states]
    handlers[1].fast = False
    for s, h in zip(states, handlers, strict=True):
        s.open_slot(1)
        h.sim_time = s.slot_start.strftime("%Y-%m-%dT%H:%M:%S")
    rng = random.Random(1)
    st0 = states[0]
    items = []
    for a0 in range(0, grid.n_assets, 40):
        cmds: dict[str, Any] = {}
        for a in range(a0, a0 + 40):
            lst = []
            if st0.requirement(a) > 0 or st0.buy_limit[a] > 0:
                e = max(st0.requirement(a), float(st0.buy_limit[a])) * rng.uniform(0.5, 1.2)
                price: Any = rng.choice([e * 20, 3, e * 25.123456789])
                lst.append({"type": "bid", "energy": e, "price": price, "replace_existing": True})
            if st0.available(a) > 0 or st0.sell_limit[a] > 0:
                e = max(st0.available(a), float(st0.sell_limit[a])) * rng.uniform(0.5, 1.2)
                cmd = {"type": "offer", "energy": e, "price": e * 24}
                if rng.random() < 0.2:
                    cmd["time_slot"] = st0.market_slot
                lst.append(cmd)
            if lst:
                cmds[grid.asset_uuid[a]] = lst
        batch = {"type": "BATCHED", "transaction_id": f"t{a0}", "batch_commands": cmds}
        items.append((batch, set(cmds), f"agg-{a0}"))
    fast = handlers[0].respond_many(items)
    general = handlers[1].respond_many(items)
    assert fast == general
    statuses = [
        r["status"]
        for answer in fast
        if isinstance(answer, tuple) and answer[0] is not None
        for rs in orjson.loads(answer[0])["responses"].values()
        for r in rs
    ]
    assert "ready" in statuses and "error" in statuses
    assert states[0].n_rows == states[1].n_rows
    n = states[0].n_rows
    for name in ("active_bid", "active_offer", "head_bid", "head_offer"):
        assert np.array_equal(getattr(states[0], name), getattr(states[1], name)), name
    for name in ("o_asset", "o_bid", "o_energy", "o_rate", "o_alive", "o_prev"):
        assert np.array_equal(getattr(states[0], name)[:n], getattr(states[1], name)[:n]), name


def test_own_leaves_rendered_in_bulk_equal_the_original() -> None:
    """Tree leaves with numbers rendered in bulk: the same text as the original's ``repr``s,
    over the states random batches and matching leave behind (two slots, so the last slot's
    figures are non-zero too)."""
    rng = random.Random(11)
    tw = Twin(5)
    ids: list[str] = []
    assets = list(range(tw.grid.n_assets - 10))
    new, old = EventBuilder(tw.grid, "pruned"), events_v1.EventBuilder(tw.grid, "pruned")
    for b in (new, old):  # every leaf in a tree (the new builder keeps leaves in trees only)
        b.template("all", assets)
    for slot in (1, 2):
        tw.next_slot(slot)
        for tick in range(4):
            tw.set_time(tick)
            tw.apply(_batch(rng, tw, ids, tick))
            tw.match()
            new.refresh_own_leaves(tw.new, assets)
            old.refresh_own_leaves(tw.new, assets)  # type: ignore[arg-type]
            own0 = len(tw.grid.markets)
            for a in assets:
                assert new.own_leaf(a) == old.pool[own0 + a].encode()
