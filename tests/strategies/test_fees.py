"""Grid fees along paths, on the SDK's unit-test tree (gsy-e-sdk test_grid_fee_calculation)."""

from __future__ import annotations

import numpy as np
import pytest

from gridfleet.strategies.fees import (
    GridTopology,
    fees_to_market_maker,
    fees_to_target,
    grid_fee,
)


def market(name: str, last: float, children: dict) -> dict:
    # The SDK's tree: last fees as in the name, "next"/current fees one more.
    return {
        "area_name": name,
        "last_market_fee": last,
        "current_market_fee": last + 1,
        "children": children,
    }


def leaf(name: str) -> dict:
    return {"area_name": name}


SDK_TREE = {
    "grid": market(
        "Grid",
        10.0,
        {
            "mm": leaf("Market Maker"),
            "s3": market("Street 3", 3.0, {"l3": leaf("Load 3"), "pv3": leaf("PV 3")}),
            "s1": market(
                "Street 1",
                1.0,
                {
                    "h11": market(
                        "House 1.1", 1.1, {"l11": leaf("Load 1.1"), "b11": leaf("Storage 1.1")}
                    ),
                    "h12": market(
                        "House 1.2", 1.2, {"l12": leaf("Load 1.2"), "pv12": leaf("PV 1.2")}
                    ),
                },
            ),
            "s2": market(
                "Street 2",
                2.0,
                {
                    "h21": market(
                        "House 2.1", 2.1, {"pv21": leaf("PV 2.1"), "l21": leaf("Load 2.1")}
                    )
                },
            ),
        },
    )
}

# (source, target, last_market_fee, current_market_fee), from the SDK's test expectations.
CASES = [
    ("Load 1.1", "Grid", 1.1 + 1 + 10, 2.1 + 2 + 11),  # House 1.1 + Street 1 + Grid
    ("PV 2.1", "Grid", 14.1, 17.1),
    ("PV 1.2", "Grid", 12.2, 15.2),
    ("PV 3", "Grid", 13.0, 15.0),
    ("PV 2.1", "Load 1.2", 16.3, 21.3),
    ("PV 2.1", "Load 3", 17.1, 21.1),
    ("Market Maker", "Load 3", 13.0, 15.0),
    ("House 2.1", "Load 1.2", 16.3, 21.3),
    ("House 2.1", "Load 3", 17.1, 21.1),
    ("Street 1", "Load 3", 14.0, 17.0),
    ("House 2.1", "House 1.2", 16.3, 21.3),
    ("House 2.1", "Grid", 14.1, 17.1),
    ("Street 1", "House 2.1", 15.1, 19.1),
    ("House 2.1", "Load 2.1", 2.1, 3.1),  # a market to its own asset
    ("Load 1.2", "House 1.2", 1.2, 2.2),  # an asset to its parent market
    ("Load 1.1", "Storage 1.1", 1.1, 2.1),  # siblings pay their parent's fee
    ("Load 1.1", "Load 1.1", 0.0, 0.0),  # a node to itself pays nothing
    ("Grid", "Grid", 0.0, 0.0),
    ("Load 1.1", "Market Maker", 12.1, 15.1),
]


@pytest.fixture(scope="module")
def topology() -> GridTopology:
    return GridTopology.from_grid_tree(SDK_TREE)


@pytest.mark.parametrize(("source", "target", "last", "current"), CASES)
def test_fee_between_two_nodes(topology, source, target, last, current):
    s, t = topology.index(source), topology.index(target)
    assert grid_fee(topology, s, t, "last_market_fee") == pytest.approx(last)
    assert grid_fee(topology, s, t, "current_market_fee") == pytest.approx(current)


@pytest.mark.parametrize(("source", "target", "last", "current"), CASES)
def test_vectorized_fees_agree(topology, source, target, last, current):
    s, t = topology.index(source), topology.index(target)
    assert fees_to_target(topology, t, "last_market_fee")[s] == pytest.approx(last)
    assert fees_to_target(topology, t, "current_market_fee")[s] == pytest.approx(current)


def test_vectorized_equals_pairwise_for_every_pair(topology):
    for which in ("last_market_fee", "current_market_fee"):
        for t in range(len(topology)):
            column = fees_to_target(topology, t, which)
            pairwise = [grid_fee(topology, s, t, which) for s in range(len(topology))]
            np.testing.assert_allclose(column, pairwise, rtol=0, atol=1e-12)


def test_fees_to_market_maker_and_null_fees():
    tree = {
        "g": {
            "area_name": "Grid",
            "current_market_fee": 4,
            "children": {
                "c": {
                    "area_name": "Community",
                    "current_market_fee": 4,
                    "children": {
                        "h": {
                            "area_name": "House",
                            "current_market_fee": None,  # None counts as 0
                            "children": {"l": {"area_name": "Load", "asset_info": {}}},
                        }
                    },
                },
                "mm": {"area_name": "Market Maker"},
            },
        }
    }
    topology = GridTopology.from_grid_tree(tree)
    fees = dict(zip(topology.name, fees_to_market_maker(topology).tolist(), strict=True))
    assert fees == {"Grid": 4.0, "Community": 8.0, "House": 8.0, "Load": 8.0, "Market Maker": 0.0}
    assert topology.is_market.tolist() == [True, True, True, False, False]


def test_a_forest_gives_nan_across_trees():
    topology = GridTopology(
        uuid=["a", "b", "c"],
        name=["A", "B", "C"],
        parent=np.array([-1, 0, -1]),
        is_market=np.array([True, False, True]),
        current_market_fee=np.array([1.0, 0.0, 2.0]),
        last_market_fee=np.array([1.0, 0.0, 2.0]),
    )
    fees = fees_to_target(topology, 1)
    assert fees[0] == 1.0 and fees[1] == 0.0 and np.isnan(fees[2])


def test_bad_topologies_are_refused():
    with pytest.raises(ValueError, match="parent"):
        GridTopology(["a"], ["A"], np.array([3]), np.array([True]), np.zeros(1), np.zeros(1))
    cycle = GridTopology(
        ["a", "b"], ["A", "B"], np.array([1, 0]), np.array([True, True]), np.ones(2), np.ones(2)
    )
    with pytest.raises(ValueError, match="cycle"):
        fees_to_target(cycle, 0)
