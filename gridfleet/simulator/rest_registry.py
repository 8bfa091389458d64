"""What the REST door tells about the simulated grid: the configuration registry (rest.md §3.4)
and the scenario GraphQL's ``readConfiguration`` serializes (§3.2), built from a :class:`Grid`.

Both are trees of the grid's markets (``type`` ``Area``) and assets (``Load``, ``PV``,
``Storage``, as gsy-e names them), children as lists, in the grid's order. The Market Maker is a
``MarketMaker`` leaf that is never ``registered`` (the official client's ``get_assets_name`` raises
on a registered node of a type it does not know).
"""

from __future__ import annotations

import re
from typing import Any

from gridfleet.simulator.grid import LOAD, PV, Grid

ASSET_TYPES = {LOAD: "Load", PV: "PV"}  # anything else is a storage
MARKET_TYPE = "Area"
MARKET_MAKER_TYPE = "MarketMaker"

_READ_CONFIGURATION = re.compile(r'readConfiguration\s*\(\s*uuid\s*:\s*"([^"]*)"\s*\)')


def asset_type(grid: Grid, index: int) -> str:
    return ASSET_TYPES.get(grid.kind_list[index], "Storage")


def _walk(grid: Grid, node: Any, m: int) -> dict[str, Any]:
    market = grid.markets[m]
    children = [_walk(grid, node, c) for c in market.child_markets]
    children += [
        node(grid.asset_name[a], asset_type(grid, a), grid.asset_uuid[a]) for a in market.assets
    ]
    if market.has_market_maker:
        children.append(node(grid.market_maker_name, MARKET_MAKER_TYPE, grid.market_maker_uuid))
    out: dict[str, Any] = node(market.name, MARKET_TYPE, market.uuid)
    out["children"] = children
    return out


def scenario(grid: Grid) -> dict[str, Any]:
    """The scenario tree ``readConfiguration`` serializes: ``{name, uuid, type, children}``."""
    return _walk(grid, lambda name, kind, uuid: {"name": name, "uuid": uuid, "type": kind}, 0)


def registry(grid: Grid, owners: dict[str, str], names: dict[str, str]) -> dict[str, Any]:
    """The configuration registry: every asset and market ``registered: true`` (the door's
    users are registered to the whole simulated grid), ``aggregator_name`` the name of the
    aggregator that selected it (``owners``: device uuid -> aggregator uuid; ``names``:
    aggregator uuid -> name), or null."""

    def node(name: str, kind: str, uuid: str) -> dict[str, Any]:
        owner = owners.get(uuid)
        return {
            "name": name,
            "type": kind,
            "uuid": uuid,
            "registered": kind != MARKET_MAKER_TYPE,
            "aggregator_name": names.get(owner) if owner is not None else None,
            "attributes": None,
        }

    return _walk(grid, node, 0)


def read_configuration_uuid(query: str) -> str | None:
    """The uuid a ``readConfiguration(uuid: "...")`` query asks for; None if it asks no such."""
    m = _READ_CONFIGURATION.search(query)
    return m.group(1) if m else None
