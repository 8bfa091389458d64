"""Grid fees along paths in the grid tree, for every node of a tree in one pass.

A trade between two nodes pays the fee of every market on the path between them: from the
source (itself if it is a market, else its parent market) up to the lowest common ancestor and
down to the target (itself if it is a market). This is the SDK's ``calculate_grid_fee``; on its
unit-test tree, ``Load 1.1`` to ``Grid`` pays ``House 1.1 + Street 1 + Grid``, siblings pay their
parent's fee, and an asset to its parent market pays that market's fee. A node to itself pays 0
(no trade crosses a market; the SDK would charge a market its own fee there).

:func:`fees_to_target` gives the fee from every node to one target (the Market Maker, for the
linear ramp's ``f``) with one numpy pass per tree level, so an ingress computes it once per tree,
not once per asset.

Which tree: gsy-e fixes a market's fee when the slot's market opens, and a ``grid_fees`` command
mid-slot applies from the next slot's market although the tree's ``current_market_fee`` shows it
at once (``last_market_fee`` is the last closed market's). The fee an order of a slot pays is
``current_market_fee`` of the slot's MARKET event: compute from that tree. (The batch's
``AssetBatch.grid_fee`` already is that fee: the fleet remembers it for the slot's ticks.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from gridfleet.strategies.context import FloatArray, IntArray

FeeKind = Literal["current_market_fee", "last_market_fee"]
MARKET_MAKER_NAME = "Market Maker"


@dataclass(slots=True)
class GridTopology:
    """A grid tree as arrays, one entry per node (markets, assets, the Market Maker).

    ``parent[i]`` is the index of ``i``'s parent, ``-1`` for a root. Fees of non-market nodes are
    ignored; a market's ``None`` fee counts as 0.
    """

    uuid: list[str]
    name: list[str]
    parent: IntArray
    is_market: npt.NDArray[np.bool_]
    current_market_fee: FloatArray
    last_market_fee: FloatArray

    def __post_init__(self) -> None:
        n = len(self.uuid)
        self.parent = np.asarray(self.parent, dtype=np.int64)
        self.is_market = np.asarray(self.is_market, dtype=bool)
        self.current_market_fee = _fees(self.current_market_fee)
        self.last_market_fee = _fees(self.last_market_fee)
        for field_name in ("name", "parent", "is_market", "current_market_fee", "last_market_fee"):
            if len(getattr(self, field_name)) != n:
                raise ValueError(f"GridTopology.{field_name} has not {n} entries")
        if n and (self.parent.min() < -1 or self.parent.max() >= n):
            raise ValueError("GridTopology.parent holds an index outside the tree")
        if n and np.any(self.parent == np.arange(n)):
            raise ValueError("GridTopology.parent: a node cannot be its own parent")

    def __len__(self) -> int:
        return len(self.uuid)

    def fees(self, which: FeeKind = "current_market_fee") -> FloatArray:
        """Each node's own fee: its market fee if it is a market, else 0."""
        values: FloatArray = getattr(self, which)
        return np.where(self.is_market, values, 0.0)

    def index(self, uuid_or_name: str) -> int:
        """The index of a node by uuid, or else by (first matching) name."""
        for keys in (self.uuid, self.name):
            try:
                return keys.index(uuid_or_name)
            except ValueError:
                pass
        raise KeyError(f"no node {uuid_or_name!r} in the grid tree")

    @classmethod
    def from_grid_tree(cls, grid_tree: Mapping[str, Any]) -> GridTopology:
        """Flatten an event's ``grid_tree`` (``{uuid: {area_name, children, *_market_fee}}``).

        A node is a market when it carries ``children`` or a market fee key; leaves such as the
        Market Maker carry only ``area_name``. Nodes come out in pre-order (parents first).
        """
        uuids: list[str] = []
        names: list[str] = []
        parents: list[int] = []
        markets: list[bool] = []
        current: list[float | None] = []
        last: list[float | None] = []
        stack: list[tuple[str, Mapping[str, Any], int]] = [
            (u, n, -1) for u, n in reversed(list(grid_tree.items()))
        ]
        while stack:
            uuid, node, parent = stack.pop()
            index = len(uuids)
            uuids.append(uuid)
            names.append(str(node.get("area_name", "")))
            parents.append(parent)
            children = node.get("children")
            markets.append(
                children is not None or "current_market_fee" in node or "last_market_fee" in node
            )
            current.append(node.get("current_market_fee"))
            last.append(node.get("last_market_fee"))
            if children:
                stack.extend((u, n, index) for u, n in reversed(list(children.items())))
        return cls(
            uuids,
            names,
            np.array(parents, dtype=np.int64),
            np.array(markets, dtype=bool),
            _fees(current),
            _fees(last),
        )


def _fees(values: Any) -> FloatArray:
    """Fees as float64 with None (and NaN) as 0."""
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return np.nan_to_num(values, nan=0.0)
    return np.array([0.0 if v is None else float(v) for v in values], dtype=np.float64)


def _path_to_root(topology: GridTopology, index: int) -> list[int]:
    path = [index]
    while topology.parent[path[-1]] >= 0:
        path.append(int(topology.parent[path[-1]]))
        if len(path) > len(topology):
            raise ValueError("GridTopology.parent has a cycle")
    return path


def fees_to_target(
    topology: GridTopology, target_index: int, which: FeeKind = "current_market_fee"
) -> FloatArray:
    """The grid fee from every node to ``target_index`` (NaN for nodes in another tree)."""
    n = len(topology)
    if not 0 <= target_index < n:
        raise IndexError(f"target index {target_index} outside the tree of {n} nodes")
    own = topology.fees(which)
    target_path = _path_to_root(topology, target_index)  # target first, root last
    on_target_path = np.zeros(n, dtype=bool)
    on_target_path[target_path] = True
    # below[a], for a on the target's path: fees of the path's nodes under a, down to the target.
    below = np.zeros(n, dtype=np.float64)
    total = 0.0
    for node in target_path:
        below[node] = total
        total += own[node]

    # Every node climbs, adding the fees it passes, until it reaches the target's path: that node
    # is the lowest common ancestor. One numpy pass per tree level, no subtraction (exact sums).
    up = np.zeros(n, dtype=np.float64)
    lca = np.arange(n, dtype=np.int64)
    climbing = np.flatnonzero(~on_target_path)
    for _ in range(n + 1):
        if not climbing.size:
            break
        up[climbing] += own[lca[climbing]]
        lca[climbing] = topology.parent[lca[climbing]]
        climbing = climbing[lca[climbing] >= 0]
        climbing = climbing[~on_target_path[lca[climbing]]]
    else:
        raise ValueError("GridTopology.parent has a cycle")

    result = np.full(n, np.nan, dtype=np.float64)
    same_tree = lca >= 0
    a = lca[same_tree]
    result[same_tree] = up[same_tree] + own[a] + below[a]
    result[target_index] = 0.0
    return result


def grid_fee(
    topology: GridTopology, source: int, target: int, which: FeeKind = "current_market_fee"
) -> float:
    """The grid fee from node ``source`` to node ``target`` (indices)."""
    if source == target:
        return 0.0
    own = topology.fees(which)
    up = _path_to_root(topology, source)
    down = _path_to_root(topology, target)
    common = set(up) & set(down)
    if not common:
        raise ValueError(f"{topology.name[source]!r} and {topology.name[target]!r} share no root")
    # Markets on the way up to the common ancestor, the ancestor itself, and on the way down.
    path = [i for i in up if i not in common] + [i for i in down if i not in common]
    lowest_common = next(i for i in up if i in common)
    return float(sum(own[i] for i in path) + own[lowest_common])


def fees_to_market_maker(
    topology: GridTopology,
    which: FeeKind = "current_market_fee",
    market_maker: str = MARKET_MAKER_NAME,
) -> FloatArray:
    """Every node's fee to the Market Maker (``f`` of the linear ramp), in one pass."""
    return fees_to_target(topology, topology.index(market_maker), which)
