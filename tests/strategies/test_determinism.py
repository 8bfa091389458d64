"""Same inputs and state give the same commands and state, however the fleet is sharded."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from gridfleet.strategies import registry
from gridfleet.strategies.base import AssetStrategy, PerAssetStrategy
from gridfleet.strategies.commands import Bid, StrategyResult
from gridfleet.strategies.context import AssetBatch, AssetKind
from tests.strategies.helpers import STRATEGY_DATA, asset, batch, ctx


class CountingBid(PerAssetStrategy):
    """A stateful user strategy: bids at a rate that rises with the number of calls."""

    def decide(self, ctx, asset, state):
        calls = state.get("calls", 0) + 1
        commands = []
        if asset.energy_requirement_kwh > 1e-4:
            commands.append(Bid(energy_kwh=asset.energy_requirement_kwh, rate=float(calls)))
        return commands, {"calls": calls}


def random_fleet(n: int, seed: int) -> AssetBatch:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = AssetKind(int(rng.integers(0, 4)))
        deviations = {"2024-06-01T11:45": float(rng.normal(0, 0.3))} if rng.random() < 0.3 else None
        rows.append(
            asset(
                f"a{i}",
                kind,
                requirement=float(rng.exponential(0.2)),
                available=float(rng.exponential(0.2)),
                to_buy=float(rng.exponential(0.5)),
                to_sell=float(rng.exponential(0.5)),
                fee=float(rng.choice([0.0, 1.5, 4.0, 8.0])),
                deviations=deviations,
                aggregator=f"agg-{i % 5}",
            )
        )
    return batch(rows)


def canonical(b: AssetBatch, result: StrategyResult) -> dict[str, list]:
    """Commands per asset uuid, in emission order, with rows replaced by uuids."""
    out: dict[str, list] = {}
    o = result.orders
    for row, is_bid, energy, rate in zip(
        o.row.tolist(), o.is_bid.tolist(), o.energy_kwh.tolist(), o.rate.tolist(), strict=True
    ):
        out.setdefault(b.uuid[row], []).append(("order", is_bid, energy, rate))
    for row, command in result.commands:
        out.setdefault(b.uuid[row], []).append(command)
    return out


def run_sharded(strategy: AssetStrategy, fleet: AssetBatch, shards: int, seed: int, state, tick):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(fleet))
    commands: dict[str, list] = {}
    new_state: dict = {}
    for part in np.array_split(order, shards):
        shard = fleet.take(part)
        shard_state = {u: state[u] for u in shard.uuid if u in state}
        # Shard inputs and state travel through msgpack between processes.
        shard_state = msgpack.unpackb(msgpack.packb(shard_state))
        result = strategy.evaluate(ctx(tick, fit=12.0, mmr=28.0), shard, shard_state)
        commands.update(canonical(shard, result))
        new_state.update(msgpack.unpackb(msgpack.packb(result.state)))
    return commands, new_state


STRATEGIES = [
    ("linear_ramp", {}),
    ("linear_ramp_per_asset", {}),
    ("fixed_rate", {"rate": 11}),
    ("settlement", {}),
    ("requirements", {"path": str(STRATEGY_DATA / "requirements.json")}),
    ("composite", {"strategies": [{"name": "settlement"}, {"name": "linear_ramp"}]}),
    ("tests.strategies.test_determinism:CountingBid", {}),
]


@pytest.mark.parametrize(("name", "params"), STRATEGIES, ids=[s[0] for s in STRATEGIES])
def test_shardings_agree(name, params):
    strategy = registry.build(name, params)
    fleet = random_fleet(500, seed=7)
    state = {u: {"calls": i % 3} for i, u in enumerate(fleet.uuid) if i % 2}
    for tick in (0, 4, 9):
        reference = run_sharded(strategy, fleet, 1, 0, state, tick)
        for shards, seed in ((2, 1), (7, 2), (500, 3)):
            assert run_sharded(strategy, fleet, shards, seed, state, tick) == reference
    # And a second process-equivalent instance built from the same config agrees too.
    again = registry.build(name, params)
    assert run_sharded(again, fleet, 3, 4, state, 9) == run_sharded(strategy, fleet, 1, 0, state, 9)
