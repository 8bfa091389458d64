"""The configuration registry of a hosted exchange (rest.md 3.4), read into names and uuids.

The registry is the simulation's grid as a tree of ``{name, type, uuid, registered,
aggregator_name, children}``; ``registered: true`` marks the nodes this user may trade. Nodes
gridfleet does not trade (``InfiniteBus``, unknown types) are skipped with a log line, malformed
nodes too: one odd node never stops a fleet. Duplicate names keep the first node (the official
client keeps the last by accident, rest.md 7.15) and are logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from gridfleet.exchange.link import ExchangeCatalog

log = logging.getLogger(__name__)

ASSET_TYPES = {"Load": "load", "PV": "pv", "Storage": "storage", "SmartMeter": "smart_meter"}
MARKET_TYPES = frozenset({"Area"})


@dataclass
class RegistryNode:
    name: str
    type: str
    uuid: str | None
    registered: bool
    aggregator_name: str | None = None  # who has selected it, as the exchange says


@dataclass
class Registry:
    """Every named node of the registry, first occurrence of each name, in tree order."""

    nodes: dict[str, RegistryNode] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it cannot be traded

    def catalog(self) -> ExchangeCatalog:
        """Registered assets and markets of the kinds gridfleet trades."""
        assets = [
            n.name for n in self.nodes.values() if n.registered and n.type in ASSET_TYPES and n.uuid
        ]
        markets = [
            n.name
            for n in self.nodes.values()
            if n.registered and n.type in MARKET_TYPES and n.uuid
        ]
        return ExchangeCatalog(
            assets=assets,
            markets=markets,
            kinds={a: ASSET_TYPES[self.nodes[a].type] for a in assets},
            asset_uuid={a: self.nodes[a].uuid or "" for a in assets},
            market_uuid={m: self.nodes[m].uuid or "" for m in markets},
        )

    def held_by(self) -> dict[str, str | None]:
        """Device uuid -> the name of the aggregator the exchange says selected it (or None)."""
        return {n.uuid: n.aggregator_name for n in self.nodes.values() if n.uuid}

    def why_not(self, name: str, market: bool) -> str | None:
        """None when ``name`` can be selected as an asset (or market); else the reason."""
        node = self.nodes.get(name)
        if node is None:
            return self.skipped.get(name, "not in the exchange's registry for this simulation")
        wanted = MARKET_TYPES if market else ASSET_TYPES
        if node.type not in wanted:
            return f"is a {node.type} in the registry, not {'a market' if market else 'an asset'}"
        if not node.registered:
            return (
                "not registered to this user on the exchange (register it on the Registry page,"
                " and wait for the operator to accept)"
            )
        if not node.uuid:
            return "has no uuid in the registry"
        return None


def parse_registry(tree: Any) -> Registry:
    """Walk the registry tree (depth first, pre-order)."""
    reg = Registry()
    if not isinstance(tree, dict):
        log.warning("the exchange's registry is not a tree (%s): no assets", type(tree).__name__)
        return reg
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            log.warning("registry: skipping a node that is not an object (%s)", type(node).__name__)
            continue
        children = node.get("children")
        if isinstance(children, list):
            stack.extend(reversed(children))
        name, kind, uuid = node.get("name"), node.get("type"), node.get("uuid")
        if not isinstance(name, str) or not name:
            log.warning("registry: skipping a node without a name (uuid %r)", uuid)
            continue
        if name in reg.nodes or name in reg.skipped:
            log.warning("registry: %r appears more than once; keeping the first", name)
            continue
        registered = node.get("registered") is True
        if not isinstance(kind, str) or (kind not in ASSET_TYPES and kind not in MARKET_TYPES):
            if registered:
                log.warning(
                    "registry: skipping %r, a registered %r gridfleet does not trade", name, kind
                )
            reg.skipped[name] = f"is a {kind!r} in the registry, which gridfleet does not trade"
            continue
        holder = node.get("aggregator_name")
        reg.nodes[name] = RegistryNode(
            name,
            kind,
            uuid if isinstance(uuid, str) and uuid else None,
            registered,
            holder if isinstance(holder, str) and holder else None,
        )
    return reg


def find_uuid(scenario: Any, name: str) -> str | None:
    """The uuid of the first node named ``name`` in a GraphQL ``readConfiguration`` scenario
    (``{name, uuid, children: [...]}``), depth first, pre-order (as the official client)."""
    stack: list[Any] = [scenario]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("name") == name and isinstance(node.get("uuid"), str):
            return str(node["uuid"])
        children = node.get("children")
        if isinstance(children, list):
            stack.extend(reversed(children))
    return None
