"""The fee an order is priced with is the fee the exchange applies to it: the slot's market-event fee.

gsy-e fixes a market's fee when the slot's market opens; a ``grid_fees`` command mid-slot shows
at once in the tree's ``current_market_fee`` but applies from the next slot's market. The fleet
remembers each aggregator's fees at the market event and prices the slot's ticks with them: in
one process (``rounds.SlotFees``) and on the broker for shards (``Keys.slot_fees``).
"""

from __future__ import annotations

import copy
from typing import Any

import fakeredis
import msgspec
import numpy as np
import pytest

from gridfleet.exchange.messages import MarketEvent, TickEvent
from gridfleet.platform.keys import Keys
from gridfleet.platform.rounds import SlotFees, TreePart, build_round
from gridfleet.platform.shard import (
    SLOT_FEES_MIN_TTL_S,
    FleetSpec,
    Manifest,
    ShardInput,
    publish_spec,
    read_slot_fees,
    run_shard,
    write_round,
)
from tests.conftest import load_example
from tests.platform.test_isolation import _own_assets_renamed, market

MARKET = load_example("05_event_market")["data"]
SLOT, NEXT_SLOT = MARKET["market_slot"], "2024-06-01T00:30"


def with_fee(data: dict[str, Any], name: str, value: float) -> dict[str, Any]:
    out = copy.deepcopy(data)
    market(out, name)["current_market_fee"] = value
    return out


def tick(data: dict[str, Any], percent: int = 30) -> dict[str, Any]:
    return {**data, "event": "tick", "slot_completion": f"{percent}%"}


def next_market(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "market_slot": NEXT_SLOT}


def ev(data: dict[str, Any]) -> MarketEvent | TickEvent:
    kind = MarketEvent if data["event"] == "market" else TickEvent
    return msgspec.convert(data, kind)


def fees(rnd: Any, aggregator: str = "agg") -> list[float]:
    rows = [i for i, a in enumerate(rnd.assets.aggregator) if a == aggregator]
    return [float(rnd.assets.grid_fee[i]) for i in rows]


RAISED = with_fee(MARKET, "Community", 9.0)  # the grid operator raised Community's fee mid-slot
AT_MARKET_EVENT = fees(build_round([("agg", ev(MARKET))]))
FROM_RAISED_TREE = fees(build_round([("agg", ev(tick(RAISED)))]))


def test_the_raise_changes_what_the_tree_says() -> None:
    assert len(AT_MARKET_EVENT) == 6 and FROM_RAISED_TREE != AT_MARKET_EVENT
    assert all(
        r == pytest.approx(m + 5.0) for r, m in zip(FROM_RAISED_TREE, AT_MARKET_EVENT, strict=True)
    )


def test_a_tick_after_a_mid_slot_change_prices_with_the_market_event_fee() -> None:
    memory = SlotFees()
    at_event = build_round([("agg", ev(MARKET))], memory=memory)
    assert fees(at_event) == AT_MARKET_EVENT
    assert set(at_event.slot_fees) == {"agg"}
    for percent in (10, 50, 90):
        rnd = build_round([("agg", ev(tick(RAISED, percent)))], memory=memory)
        assert fees(rnd) == AT_MARKET_EVENT, percent


def test_a_new_slot_picks_the_new_fee() -> None:
    memory = SlotFees()
    build_round([("agg", ev(MARKET))], memory=memory)
    build_round([("agg", ev(tick(RAISED)))], memory=memory)
    nxt = build_round([("agg", ev(next_market(RAISED)))], memory=memory)
    assert fees(nxt) == FROM_RAISED_TREE
    later = build_round([("agg", ev(tick(next_market(RAISED))))], memory=memory)
    assert fees(later) == FROM_RAISED_TREE


def test_without_a_memory_of_the_slot_ticks_are_priced_from_their_tree() -> None:
    fresh = SlotFees()  # a loop that started mid-slot
    assert fees(build_round([("agg", ev(tick(RAISED)))], memory=fresh)) == FROM_RAISED_TREE
    stale = SlotFees()
    build_round([("agg", ev(MARKET))], memory=stale)
    # A memory of another slot is not this slot's.
    got = build_round([("agg", ev(tick(next_market(RAISED))))], memory=stale)
    assert fees(got) == FROM_RAISED_TREE


A, B = _own_assets_renamed(MARKET, "a-"), _own_assets_renamed(MARKET, "b-")


def test_each_aggregator_remembers_its_own_tree() -> None:
    """Per-tree isolation holds for the memory: A's market event said Grid 7, B's said Grid 4;
    at a tick both trees say Grid 9 and each prices with what its own market event said."""
    memory = SlotFees()
    build_round([("agg-a", ev(with_fee(A, "Grid", 7.0))), ("agg-b", ev(B))], memory=memory)
    rnd = build_round(
        [
            ("agg-a", ev(tick(with_fee(A, "Grid", 9.0)))),
            ("agg-b", ev(tick(with_fee(B, "Grid", 9.0)))),
        ],
        memory=memory,
    )
    a_alone = build_round([("agg-a", ev(with_fee(A, "Grid", 7.0)))])
    assert fees(rnd, "agg-a") == fees(a_alone, "agg-a")
    assert fees(rnd, "agg-b") == AT_MARKET_EVENT


def test_a_poisoned_market_event_leaves_no_memory_and_no_trace_in_the_other() -> None:
    memory = SlotFees()
    at_event = build_round(
        [("agg-a", ev(with_fee(A, "Community", -1e6))), ("agg-b", ev(B))], memory=memory
    )
    assert set(at_event.unusable) == {"agg-a"} and set(at_event.slot_fees) == {"agg-b"}
    rnd = build_round(
        [("agg-a", ev(tick(with_fee(A, "Community", 9.0)))), ("agg-b", ev(tick(RAISED_B)))],
        memory=memory,
    )
    assert fees(rnd, "agg-a") == FROM_RAISED_TREE  # no memory: its tick's tree
    assert fees(rnd, "agg-b") == AT_MARKET_EVENT
    # A poisoned tick tree is still unusable although its aggregator has a memory.
    bad = build_round([("agg-b", ev(tick(with_fee(B, "Grid", -1e6))))], memory=memory)
    assert set(bad.unusable) == {"agg-b"} and len(bad.assets) == 0


RAISED_B = with_fee(B, "Community", 9.0)


# -- the shard path: the memory on the broker --------------------------------------------------


class Broker:
    """A fleet of one aggregator running the linear ramp, its rounds run as shards."""

    def __init__(self) -> None:
        self.r = fakeredis.FakeRedis()
        self.keys = Keys("t")
        self.version = publish_spec(
            self.r,
            self.keys,
            FleetSpec(
                strategies=[{"name": "linear_ramp", "params": {}}], by_kind={"agg": [0, 0, 0, 0]}
            ),
        )
        self.n = 0

    def run(self, data: dict[str, Any], split: bool = False) -> bytes:
        """The aggregator's commands for this event, evaluated as shards (``split``: its tree in
        two shards of row ranges, as ingress cuts a big aggregator)."""
        ctx = build_round([("agg", ev(data))]).ctx
        tree = msgspec.json.encode(data["grid_tree"])
        parts = (
            [ShardInput([TreePart("agg", tree, 0, 3)]), ShardInput([TreePart("agg", tree, 3)])]
            if split
            else [ShardInput([TreePart("agg", tree)])]
        )
        self.n += 1
        rid = f"{ctx.market_slot}#{ctx.tick_index}-{self.n}"
        write_round(
            self.r,
            self.keys,
            Manifest(rid, ctx, self.version, len(parts), ["agg"], 0.0, 1.0),
            parts,
        )
        out = b""
        for i in range(len(parts)):
            out += run_shard(self.r, self.keys, rid, i).output.fragments.get("agg", b"")
        return out


def ramp_bids(fragment: bytes) -> int:
    return fragment.count(b'"type":"bid"')


@pytest.mark.parametrize("split", [False, True])
def test_a_shard_at_a_tick_prices_with_the_fees_its_market_event_left_on_the_broker(
    split: bool,
) -> None:
    unchanged = Broker()
    unchanged.run(MARKET, split)
    want = unchanged.run(tick(MARKET), split)
    assert ramp_bids(want) >= 3

    broker = Broker()
    broker.run(MARKET, split)
    raw = broker.r.hgetall(broker.keys.slot_fees("agg"))
    assert raw[b"#slot"] == SLOT.encode() and len(raw) > 1
    ttl = broker.r.ttl(broker.keys.slot_fees("agg"))
    assert SLOT_FEES_MIN_TTL_S - 5 <= ttl <= SLOT_FEES_MIN_TTL_S
    assert broker.run(tick(RAISED), split) == want  # as if nothing had changed: what gsy-e charges

    # No memory on the broker (the fleet started mid-slot): the tick's tree.
    fresh = Broker()
    from_tree = fresh.run(tick(RAISED), split)
    assert from_tree != want


def test_the_next_market_event_replaces_the_memory() -> None:
    broker = Broker()
    broker.run(MARKET)
    before = read_slot_fees(broker.r, broker.keys, SLOT, ["agg"])["agg"]
    broker.run(next_market(RAISED))
    assert read_slot_fees(broker.r, broker.keys, SLOT, ["agg"]) == {}  # not this slot's any more
    after = read_slot_fees(broker.r, broker.keys, NEXT_SLOT, ["agg"])["agg"]
    assert set(after) == set(before)
    assert all(after[m] == pytest.approx(before[m] + 5.0) for m in before)
    assert set(after.values()) == set(FROM_RAISED_TREE)


def test_values_gridfleet_did_not_write_are_not_used() -> None:
    r = fakeredis.FakeRedis()
    keys = Keys("t")
    r.hset(
        keys.slot_fees("agg"),
        mapping={"#slot": SLOT, "m1": "1.5", "m2": "nan", "m3": "-2", "m4": "x", "m5": "inf"},
    )
    assert read_slot_fees(r, keys, SLOT, ["agg", "other"]) == {"agg": {"m1": 1.5}}
    assert read_slot_fees(r, keys, SLOT, []) == {}


def test_remembered_fees_are_the_batch_fees_of_the_market_event() -> None:
    """What is remembered per market is exactly the grid_fee its assets got at the market event."""
    rnd = build_round([("agg", ev(MARKET))], memory=SlotFees())
    parents = {p for p in rnd.slot_fees["agg"]}
    assert len(parents) == 3  # the three houses with the aggregator's assets
    assert sorted(set(rnd.slot_fees["agg"].values())) == sorted(set(np.round(fees(rnd), 12)))
