"""Who holds which assets: the device map, the registry's seeding, and what the engine derives
from the aggregators' selections (each one's assets, every asset's owner, event templates)."""

from __future__ import annotations

import uuid as uuid_mod
from typing import Any

import numpy as np

from gridfleet.simulator.batch import ASSET, MARKET
from gridfleet.simulator.events import EventBuilder
from gridfleet.simulator.grid import Grid
from gridfleet.simulator.registry import AggregatorRegistry
from gridfleet.simulator.trade_events import owner_array


def device_map(grid: Grid) -> dict[str, tuple[int, int]]:
    """Every selectable uuid -> (ASSET or MARKET, its index)."""
    devices: dict[str, tuple[int, int]] = {u: (ASSET, i) for i, u in enumerate(grid.asset_uuid)}
    devices.update({m.uuid: (MARKET, m.index) for m in grid.markets})
    return devices


def new_registry(grid: Grid, devices: dict[str, tuple[int, int]]) -> AggregatorRegistry:
    """A registry knowing every device, with assets registrable by name and markets by slug."""
    registry = AggregatorRegistry(devices={u: "" for u in devices})
    for n, u in zip(grid.asset_name, grid.asset_uuid, strict=True):
        registry.names.setdefault(n, u)  # duplicate names: the first one registers
    for m in grid.markets:
        registry.names.setdefault(m.slug, m.uuid)
    return registry


def aggregator_uuid(name: str) -> str:
    """The uuid a preselected aggregator gets: uuid5 of its name, stable across runs."""
    return str(uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"gridfleet-aggregator/{name}"))


def preselect(registry: AggregatorRegistry, fleet: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Create a fleet assignment's aggregators and select their devices, as the wire would.
    Returns name -> aggregator uuid."""
    out = {}
    for name, entry in fleet.items():
        agg = aggregator_uuid(name)
        registry.command({"type": "CREATE", "name": name, "transaction_id": agg})
        for dev in [*entry.get("asset_uuids", []), *entry.get("market_uuids", [])]:
            registry.command(
                {"type": "SELECT", "aggregator_uuid": agg, "device_uuid": dev, "transaction_id": ""}
            )
        out[name] = agg
    return out


class Selection:
    """What the engine keeps of the selections, brought up to date by :meth:`sync`."""

    def __init__(
        self,
        grid: Grid,
        devices: dict[str, tuple[int, int]],
        registry: AggregatorRegistry,
        events: EventBuilder,
    ) -> None:
        self.grid = grid
        self.devices = devices
        self.registry = registry
        self.events = events
        self.own_assets: dict[str, list[int]] = {}  # aggregator uuid -> its asset indices
        # aggregator uuid -> its selected devices, uuid -> (ASSET|MARKET, index): the batch
        # handler's lookup for an aggregator whose selection has not changed since sync
        self.own_devices: dict[str, dict[str, tuple[int, int]]] = {}
        self.asset_owner: dict[int, str] = {}  # asset index -> aggregator uuid
        self.owner_arr: tuple[np.ndarray, list[str]] = owner_array(grid, {})

    def sync(self) -> bool:
        """Rebuild the event templates of aggregators whose selection changed since the last
        call; True when any did (the owners changed: trees built before are stale)."""
        reg = self.registry
        changed = bool(reg.changed)
        for agg in reg.changed:
            if agg not in reg.aggregators:
                self.events.forget(agg)
                self.own_assets.pop(agg, None)
                self.own_devices.pop(agg, None)
                continue
            own = {d: self.devices[d] for d in reg.selected[agg]}
            self.own_devices[agg] = own
            assets = sorted(i for kind, i in own.values() if kind == ASSET)
            markets = [i for kind, i in own.values() if kind == MARKET]
            self.own_assets[agg] = assets
            self.events.template(agg, assets, markets)
        if changed:
            self.asset_owner = {a: agg for agg, assets in self.own_assets.items() for a in assets}
            self.owner_arr = owner_array(self.grid, self.asset_owner)
            self.events.lay_out()
        reg.changed.clear()
        return changed
