"""Orders serialized by numpy (``evaluate._render_orders``) are byte for byte what the general
serializer writes: the same fragments in the same order, the same counts, refusals and state.
Differential, on generated batches and strategies: rows of an aggregator apart, uuids twice or
needing escapes, orders refused, several strategies, commands besides orders."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridfleet.platform.evaluate import ShardOutput, _check_orders, _render_orders, evaluate_shard
from gridfleet.strategies.base import AssetStrategy, StrategyConfig
from gridfleet.strategies.builtin.linear_ramp import LinearRamp
from gridfleet.strategies.commands import Bid, OrderArrays, StrategyResult
from gridfleet.strategies.context import AssetBatch, State, TickContext

CTX = TickContext("2024-06-01T12:00", "2024-06-01T12:15", 3, 10, False, 10.0, 30.0)


class Scripted(AssetStrategy):
    """Returns what the test drew for the rows it is given (its orders name rows of its batch)."""

    name = "scripted"

    def __init__(self, picks: list[tuple[int, bool, float, float]], bids: list[int]) -> None:
        super().__init__(StrategyConfig())
        self.picks, self.bids = picks, bids

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        n = len(assets)
        picks = [(r % n, b, e, p) for r, b, e, p in self.picks] if n else []
        orders = OrderArrays(
            np.array([r for r, *_ in picks], dtype=np.int64),
            np.array([b for _, b, _, _ in picks], dtype=bool),
            np.array([e for *_, e, _ in picks], dtype=np.float64),
            np.array([p for *_, p in picks], dtype=np.float64),
        )
        commands = [(r % n, Bid(energy_kwh=0.5, rate=12.0)) for r in self.bids] if n else []
        return StrategyResult(orders=orders, commands=list(commands))

    def on_tick(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        return self.on_market(ctx, assets, state)


UUIDS = st.integers(0, 9).flatmap(
    lambda i: st.text(max_size=3) if i == 0 else st.sampled_from([f"{j:04x}-id" for j in range(60)])
)
ENERGY = st.sampled_from([0.0, 1e-5, 0.1, 0.25, 3.0, 1e8]) | st.floats(0, 5)
RATE = st.sampled_from([0.0, 12.5, -1.0, 1e7]) | st.floats(0, 40)


@st.composite
def shards(draw: st.DrawFn) -> tuple[AssetBatch, np.ndarray, list[AssetStrategy]]:
    n = draw(st.integers(0, 14))
    f = st.lists(ENERGY, min_size=n, max_size=n).map(lambda v: np.array(v, dtype=np.float64))
    batch = AssetBatch(
        uuid=draw(st.lists(UUIDS, min_size=n, max_size=n)),
        name=["x"] * n,
        aggregator=draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n)),
        parent_market=["m"] * n,
        kind=np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int8),
        energy_requirement_kwh=draw(f),
        available_energy_kwh=draw(f),
        energy_to_buy_kwh=draw(f),
        energy_to_sell_kwh=draw(f),
        used_storage_kwh=np.zeros(n),
        free_storage_kwh=np.zeros(n),
        grid_fee=np.zeros(n),
    )
    pick = st.tuples(st.integers(0, 20), st.booleans(), ENERGY, RATE)
    strategies: list[AssetStrategy] = [LinearRamp()]
    for _ in range(draw(st.integers(0, 2))):
        bids = draw(st.lists(st.integers(0, 20), max_size=2)) if draw(st.booleans()) else []
        strategies.append(Scripted(draw(st.lists(pick, max_size=12)), bids))
    index = np.array(
        draw(st.lists(st.integers(0, len(strategies) - 1), min_size=n, max_size=n)),
        dtype=np.int64,
    )
    return batch, index, strategies


def assert_same(a: ShardOutput, b: ShardOutput) -> None:
    assert list(a.fragments.items()) == list(b.fragments.items())
    assert list(a.counts.items()) == list(b.counts.items())
    assert a.commands == b.commands
    assert a.refusals == b.refusals and a.errors == b.errors and a.state == b.state


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shards(), st.booleans())
def test_rendered_orders_are_what_the_general_serializer_writes(
    shard: tuple[AssetBatch, np.ndarray, list[AssetStrategy]], market_event: bool
) -> None:
    batch, index, strategies = shard
    ctx = dataclasses.replace(CTX, is_market_event=market_event)
    fast = evaluate_shard(ctx, batch, index, strategies, {})
    general = evaluate_shard(ctx, batch, index, strategies, {}, fast_render=False)
    assert_same(fast, general)
    for fragment in fast.fragments.values():
        orjson.loads(b"{" + fragment + b"}")


def test_a_fleet_of_plain_uuids_takes_the_rendered_path() -> None:
    n = 50
    batch = AssetBatch(
        uuid=[f"{i:08x}-0000-4000-8000-000000000000" for i in range(n)],
        name=["x"] * n,
        aggregator=[f"agg{i % 3}" for i in range(n)],  # rows of an aggregator apart
        parent_market=["m"] * n,
        kind=np.array([i % 4 for i in range(n)], dtype=np.int8),
        energy_requirement_kwh=np.full(n, 0.3),
        available_energy_kwh=np.full(n, 0.2),
        energy_to_buy_kwh=np.full(n, 0.1),
        energy_to_sell_kwh=np.full(n, 0.4),
        used_storage_kwh=np.zeros(n),
        free_storage_kwh=np.zeros(n),
        grid_fee=np.linspace(0, 2, n),
    )
    result = LinearRamp().evaluate(CTX, batch, {})
    orders = _check_orders(result, np.arange(n), batch, ShardOutput())
    assert orders is not None and _render_orders([orders], batch) is not None
    assert_same(
        evaluate_shard(CTX, batch, np.zeros(n, np.int64), [LinearRamp()], {}),
        evaluate_shard(CTX, batch, np.zeros(n, np.int64), [LinearRamp()], {}, fast_render=False),
    )
