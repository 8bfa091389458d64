"""The batch fast path and the column order book against the original code, byte for byte.

``tests/simulator/reference/`` holds the batch handler, state and trade rows as they were before
the fast path (frozen copies). Random batches (common shapes, every rejection, crash shapes,
duplicates, deletes, lists, forecasts, market commands, unknown devices) go to both; the answers
must be the same bytes, the state the same numbers, and after matching the same trades and the
same trade-event rows.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest

from gridfleet.simulator.batch import ASSET, MARKET, BatchHandler
from gridfleet.simulator.door import payload_bytes
from gridfleet.simulator.events import EventBuilder
from gridfleet.simulator.grid import LOAD, PV, generate_grid
from gridfleet.simulator.state import ExchangeState
from gridfleet.simulator.trade_events import owner_array
from tests.simulator.reference import batch_v1, events_v1, state_v1
from tests.simulator.reference.trade_events_v2 import trade_rows

START = datetime(2024, 6, 1, 11, 30)
SLOT = timedelta(minutes=15)
AGG = "0b1d4f3e-0000-4000-8000-00000000a99"


def _old_bytes(handler: batch_v1.BatchHandler, batch: dict[str, Any], sel: set[str]) -> Any:
    out = handler.handle(batch, sel)
    if out is None:
        return None
    env = {
        "command": "batch_commands",
        "transaction_id": batch.get("transaction_id"),
        "aggregator_uuid": AGG,
        "responses": out,
    }
    return orjson.dumps(env)


class Twin:
    """The same grid run by the original code and by the current code (fast and general)."""

    def __init__(self, seed: int) -> None:
        self.grid = generate_grid(60, houses_size=10, seed=seed)
        g = self.grid
        devices: dict[str, tuple[int, int]] = {u: (ASSET, i) for i, u in enumerate(g.asset_uuid)}
        devices.update({m.uuid: (MARKET, m.index) for m in g.markets})
        self.devices = devices
        self.old = state_v1.ExchangeState(g, SLOT, START)
        self.new = ExchangeState(g, SLOT, START)
        self.gen = ExchangeState(g, SLOT, START)  # current code, general path only
        self.h_old = batch_v1.BatchHandler(self.old, devices)
        self.h_new = BatchHandler(self.new, devices)
        self.h_gen = BatchHandler(self.gen, devices)
        self.h_gen.fast = False
        # the aggregator holds all but the last house; a few devices stay unselected
        self.selected = {u for i, u in enumerate(g.asset_uuid) if i < g.n_assets - 10}
        self.selected |= {m.uuid for m in g.markets[1:4]}
        self.owner = {i: AGG for i in range(g.n_assets - 10)}
        self.trade_seq = 0
        self.slot = 0
        self.open(1)

    def next_slot(self, index: int) -> None:
        """Close the open slot (none before slot 1: the twin opens it) and open ``index``."""
        if index != 1:
            for st in (self.old, self.new, self.gen):
                st.close_slot()
            self.open(index)

    def open(self, index: int) -> None:
        self.slot = index
        for st in (self.old, self.new, self.gen):
            st.open_slot(index)
        self.set_time(0)

    def set_time(self, tick: int) -> None:
        t = (self.new.slot_start + tick * SLOT / 10).strftime("%Y-%m-%dT%H:%M:%S")
        for h in (self.h_old, self.h_new, self.h_gen):
            h.sim_time = t
            h.closing = tick == 9

    def apply(self, batch: dict[str, Any]) -> None:
        want = _old_bytes(self.h_old, batch, self.selected)
        got, n = self.h_new.respond(batch, self.selected, AGG)
        gen, n_gen = self.h_gen.respond(batch, self.selected, AGG)
        assert got == want, (batch, got, want)
        assert gen == want
        if want is not None:
            assert n == n_gen == sum(len(v) for v in orjson.loads(want)["responses"].values())
        self.same_state()

    def apply_many(self, batches: list[dict[str, Any]]) -> None:
        """Several batches in one call (the engine applies what one drain read together)."""
        want = [_old_bytes(self.h_old, b, self.selected) for b in batches]
        items = [(b, self.selected, AGG) for b in batches]
        got = self.h_new.respond_many(items, pieces=True)  # as the engine asks
        gen = self.h_gen.respond_many(items)
        assert [
            (None if g[0] is None else payload_bytes(g[0])) if isinstance(g, tuple) else g
            for g in got
        ] == want
        assert [g[0] if isinstance(g, tuple) else g for g in gen] == want
        self.same_state()

    def same_state(self) -> None:
        for name in (
            "active_bid",
            "active_offer",
            "demand",
            "bought",
            "sold",
            "cost",
            "used",
            "market_fee",
            "last_fee",
        ):
            a = getattr(self.old, name)
            for st in (self.new, self.gen):
                assert np.array_equal(a, getattr(st, name)), name
        assert self.old._order_seq == self.new._order_seq == self.gen._order_seq

    def match(self) -> None:
        r_old = self.old.match_tick()
        r_new = self.new.match_tick()
        r_gen = self.gen.match_tick()
        for r in (r_new, r_gen):
            assert r.buyer.tolist() == r_old.buyer
            assert r.seller.tolist() == r_old.seller
            assert r.energy.tolist() == r_old.energy
            assert r.price.tolist() == r_old.price
            assert r.fee.tolist() == r_old.fee
            assert r.bid_residual.tolist() == r_old.bid_residual
            assert r.offer_residual.tolist() == r_old.offer_residual
        self.same_state()
        when = "2024-06-01T12:00:00+00:00"
        want = events_v1.trade_rows(r_old, self.grid, self.owner, when, self.trade_seq)
        got = trade_rows(
            r_new,
            self.grid,
            owner_array(self.grid, self.owner),
            when,
            self.trade_seq,
            EventBuilder(self.grid).name_js,
        )
        assert got == want
        self.trade_seq += len(r_old)


def _number(rng: random.Random, room: float) -> Any:
    if rng.random() < 0.8:
        return room * rng.uniform(0.05, 0.95)
    return rng.choice(
        [
            room,
            room + 1e-5,
            room * 1.5 + 0.01,
            0,
            0.0,
            1e-5,
            -0.1,
            1,
            3,
            "0.1",
            None,
            True,
            math.nan,
            math.inf,
            2**60,
            [0.1],
        ]
    )


def _order(rng: random.Random, st: ExchangeState, a: int, side: str, slot: str) -> dict[str, Any]:
    room = max(float(st.demand[a]), float(st.buy_limit[a]), float(st.sell_limit[a]), 0.05)
    cmd: dict[str, Any] = {"type": side}
    if rng.random() < 0.98:
        cmd["energy"] = _number(rng, room)
    if rng.random() < 0.8:
        cmd["price"] = rng.uniform(0, 35) * room
    elif rng.random() < 0.95:
        cmd["price"] = rng.choice([rng.uniform(0, 5), 2, 0, -1, -0.5, 1e300, "3", None, 2**60])
    r = rng.random()
    if r < 0.3:
        cmd["replace_existing"] = rng.choice([True, False, False, None, 0, "no"])
    r = rng.random()
    if r < 0.25:
        cmd["time_slot"] = rng.choice([slot, slot + ":00", "2024-06-01T00:00", 5, None, slot[:10]])
    if rng.random() < 0.03:
        cmd["attributes"] = {}
    if rng.random() < 0.05:
        cmd["transaction_id"] = "inner"
    return cmd


def _batch(rng: random.Random, tw: Twin, ids: list[str], tick: int) -> dict[str, Any]:
    g, st = tw.grid, tw.new
    slot = st.market_slot
    cmds: dict[str, Any] = {}
    for a in rng.sample(range(g.n_assets), rng.randint(1, g.n_assets)):
        kind = g.kind_list[a]
        r = rng.random()
        lst: list[Any] = []
        if r < 0.7:  # the common shape
            if kind != PV:
                lst.append(_order(rng, st, a, "bid", slot))
            if kind != LOAD and (kind == PV or rng.random() < 0.8):
                lst.append(_order(rng, st, a, "offer", slot))
            if rng.random() < 0.1:
                lst.reverse()
            if rng.random() < 0.05:
                lst.append(_order(rng, st, a, rng.choice(["bid", "offer"]), slot))
            if rng.random() < 0.05:  # shapes gsy-e rejects: bid on a PV, offer on a load
                lst = [_order(rng, st, a, "bid" if kind == PV else "offer", slot)]
        elif r < 0.85:
            other = rng.choice(
                [
                    {"type": "delete_bid"},
                    {"type": "delete_offer"},
                    {"type": "delete_bid", "bid_id": rng.choice(ids) if ids else "x"},
                    {"type": "delete_offer", "offer_id": rng.choice(ids) if ids else "x"},
                    {"type": "delete_bid", "bid_id": 5},
                    {"type": "list_bids"},
                    {"type": "list_offers"},
                    {"type": "device_info"},
                    {"type": "set_energy_forecast", "energy_forecast": {slot: 0.05}},
                    {"type": "set_energy_measurement", "energy_measurement_kWh": {slot: 0.01}},
                    {"type": "set_energy_forecast", "energy_forecast": {slot: -1}},
                    {"type": "foo"},
                    {"energy": 0.1, "price": 1},
                    "bid",
                    {"type": "grid_fees", "data": {"fee_const": 1}},
                ]
            )
            lst = [other, _order(rng, st, a, "bid" if kind != PV else "offer", slot)]
            if rng.random() < 0.5:
                lst.reverse()
        elif r < 0.9:
            lst = []
        else:
            cmds[g.asset_uuid[a]] = _order(rng, st, a, "bid" if kind != PV else "offer", slot)
            continue
        cmds[g.asset_uuid[a]] = lst
    if rng.random() < 0.3:
        m = rng.choice(g.markets)
        cmds[m.uuid] = [
            rng.choice(
                [
                    {"type": "dso_market_stats"},
                    {"type": "grid_fees", "data": {"fee_const": rng.choice([0, 2, -1])}},
                    {"type": "grid_fees", "data": {"fee_percent": 5}},
                    {"type": "bid", "energy": 0.1, "price": 1},
                ]
            )
        ]
    if rng.random() < 0.1:
        cmds["31b7be79-cd9a-4549-aef8-35b1543e54f4"] = [{"type": "bid", "energy": 1, "price": 1}]
    tid = rng.choice([f"{slot}/{tick * 10}%/abc", "plain", None, 7, {"k": [1, "é"]}])
    return {
        "type": "BATCHED",
        "transaction_id": tid,
        "aggregator_uuid": AGG,
        "batch_commands": cmds,
    }


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_answers_and_state_equal_the_original(seed: int) -> None:
    rng = random.Random(seed)
    tw = Twin(seed)
    ids: list[str] = []
    for slot in (1, 2):
        tw.next_slot(slot)
        for tick in range(10):
            tw.set_time(tick)
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.5:
                    tw.apply(_batch(rng, tw, ids, tick))
                else:  # same assets in several batches of one call
                    tw.apply_many([_batch(rng, tw, ids, tick) for _ in range(rng.randint(2, 4))])
                ids.extend(o.id for o in tw.old.orders.values())
                ids = ids[-50:]
            tw.match()


def test_round8_and_reprs_equal_round_and_repr() -> None:
    from gridfleet.simulator.numfmt import hex12, reprs, round8

    rng = np.random.default_rng(0)
    x = np.concatenate(
        (
            rng.uniform(0, 40, 20000),
            rng.uniform(0, 1, 4000) * 10.0 ** rng.integers(-9, 20, 4000),
            np.round(rng.uniform(0, 50, 5000), 9) + 5e-9,  # halves at the 8th decimal
            np.arange(0, 2, 1e-8 / 2)[:5000],
            [
                0.0,
                -0.0,
                0.125,
                2.5e-9,
                1e-4,
                9.99999999e-05,
                1e16,
                1e300,
                -1e-300,
                math.inf,
                -math.inf,
                math.nan,
            ],
        )
    )
    want = [round(v, 8) for v in x.tolist()]
    got = round8(x).tolist()
    assert [repr(v) for v in got] == [repr(v) for v in want]
    values: list[Any] = [*x.tolist(), 0, 7, -3, 2**52]
    assert reprs(values) == [repr(v) for v in values]
    ids = np.array([0, 1, 255, 2**47 - 1, 123456789, 16**12 - 1])
    assert hex12(ids) == [f"{v:012x}" for v in ids.tolist()]


def test_batch_of_nothing_known_gets_no_answer() -> None:
    tw = Twin(0)
    assert tw.h_new.respond({"batch_commands": "x"}, tw.selected, AGG) == (None, 0)
    unknown = {"batch_commands": {"nope": [{"type": "bid", "energy": 1, "price": 1}]}}
    assert tw.h_new.respond(unknown, tw.selected, AGG) == (None, 0)
    tw.apply({"transaction_id": "t", "batch_commands": {}})


def test_unserialisable_transaction_id_raises_like_the_original() -> None:
    tw = Twin(0)
    batch = {"transaction_id": {1, 2}, "batch_commands": {tw.grid.asset_uuid[0]: []}}
    with pytest.raises(TypeError):
        _old_bytes(tw.h_old, batch, tw.selected)
    with pytest.raises(TypeError):
        tw.h_new.respond(batch, tw.selected, AGG)


@pytest.mark.parametrize("fast", [True, False])
def test_a_bid_of_exactly_the_reported_energy_to_buy_is_accepted(fast: bool) -> None:
    """Events round energies to 8 decimals: rounding up must not turn the reported amount into a
    rejected bid (gsy-e reports unrounded floats, so there the same bid passes too)."""
    from gridfleet.simulator.grid import STORAGE

    grid = generate_grid(30, houses_size=10, seed=3)
    devices: dict[str, tuple[int, int]] = {u: (ASSET, i) for i, u in enumerate(grid.asset_uuid)}
    state = ExchangeState(grid, SLOT, START)
    state.open_slot(1)
    handler = BatchHandler(state, devices)
    handler.fast = fast
    handler.sim_time = state.slot_start.strftime("%Y-%m-%dT%H:%M:%S")
    a = next(i for i in range(grid.n_assets) if grid.kind_list[i] == STORAGE)
    state.buy_limit[a] = 1.583403736  # the 8-decimal report rounds this up
    reported = state.asset_info(a)["energy_to_buy"]
    assert reported > state.buy_limit[a]
    uuid = grid.asset_uuid[a]
    batch = {
        "type": "BATCHED",
        "transaction_id": "t",
        "aggregator_uuid": AGG,
        "batch_commands": {
            uuid: [
                {
                    "type": "bid",
                    "energy": reported,
                    "price": reported * 10,
                    "replace_existing": True,
                }
            ]
        },
    }
    out = handler.handle(batch, {uuid})
    assert out is not None and out[uuid][0]["status"] == "ready", out
    over = {
        **batch,
        "batch_commands": {
            uuid: [{"type": "bid", "energy": state.buy_limit[a] + 1e-6, "price": 1.0}]
        },
    }
    out = handler.handle(over, {uuid})
    assert out is not None and out[uuid][0]["status"] == "error"
