"""What a strategy sees: the tick's market context and a columnar batch of assets or markets.

These types are the contract between the platform (which builds them from the exchange's grid
tree) and strategies (which read them). They hold plain Python and numpy values only, so a shard
can be serialized with msgpack and evaluated in any process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
KindArray = npt.NDArray[np.int8]


class AssetKind(IntEnum):
    """Kind of a grid leaf an aggregator controls, derived from its ``asset_info`` keys."""

    LOAD = 0
    PV = 1
    STORAGE = 2
    SMART_METER = 3


@dataclass(frozen=True, slots=True)
class TickContext:
    """One event round (a market event or a tick) as every strategy of the fleet sees it."""

    market_slot: str  # "YYYY-MM-DDTHH:MM", the open spot market
    next_market_slot: str  # the slot after it (forecasts are for this one)
    tick_index: int  # 0 at the market event, int(slot_completion / 10) at ticks
    num_ticks: int  # tick events per slot (10 at gsy-e)
    is_market_event: bool
    feed_in_tariff_rate: float  # F, ct/kWh
    market_maker_rate: float  # M, ct/kWh
    slot_length_s: int = 900
    # Name -> uuid of the assets strategies may refer to by name (trading partners of the
    # `requirements` strategy). The same mapping for every shard keeps results shard-independent.
    asset_uuids_by_name: Mapping[str, str] | None = None


@dataclass(slots=True)
class AssetBatch:
    """A shard's assets, one row each. All arrays have the same length as ``uuid``.

    Energies that do not apply to a kind are 0.0 (a PV has no requirement). ``grid_fee`` is the
    sum of the market fees along the path from the asset to the Market Maker (f) that the
    exchange applies to the slot's orders: those of the slot's market event (docs/strategies.md).
    """

    uuid: list[str]
    name: list[str]
    aggregator: list[str]  # aggregator uuid controlling each asset
    parent_market: list[str]  # area_name of the market the asset sits in
    kind: KindArray
    energy_requirement_kwh: FloatArray
    available_energy_kwh: FloatArray
    energy_to_buy_kwh: FloatArray
    energy_to_sell_kwh: FloatArray
    used_storage_kwh: FloatArray
    free_storage_kwh: FloatArray
    grid_fee: FloatArray
    # time_slot -> kWh still unsettled (settlement markets); None where the exchange sent nothing.
    unsettled_deviation_kwh: list[dict[str, float] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uuid)

    def take(self, rows: IntArray | list[int]) -> AssetBatch:
        """A new batch with only ``rows`` (in that order)."""
        idx = np.asarray(rows, dtype=np.int64)
        pick = [int(i) for i in idx]
        return AssetBatch(
            uuid=[self.uuid[i] for i in pick],
            name=[self.name[i] for i in pick],
            aggregator=[self.aggregator[i] for i in pick],
            parent_market=[self.parent_market[i] for i in pick],
            kind=self.kind[idx],
            energy_requirement_kwh=self.energy_requirement_kwh[idx],
            available_energy_kwh=self.available_energy_kwh[idx],
            energy_to_buy_kwh=self.energy_to_buy_kwh[idx],
            energy_to_sell_kwh=self.energy_to_sell_kwh[idx],
            used_storage_kwh=self.used_storage_kwh[idx],
            free_storage_kwh=self.free_storage_kwh[idx],
            grid_fee=self.grid_fee[idx],
            unsettled_deviation_kwh=(
                [self.unsettled_deviation_kwh[i] for i in pick]
                if self.unsettled_deviation_kwh
                else []
            ),
        )

    def view(self, row: int) -> AssetView:
        """One asset as a small object, for per-asset strategies."""
        return AssetView(
            uuid=self.uuid[row],
            name=self.name[row],
            aggregator=self.aggregator[row],
            parent_market=self.parent_market[row],
            kind=AssetKind(int(self.kind[row])),
            energy_requirement_kwh=float(self.energy_requirement_kwh[row]),
            available_energy_kwh=float(self.available_energy_kwh[row]),
            energy_to_buy_kwh=float(self.energy_to_buy_kwh[row]),
            energy_to_sell_kwh=float(self.energy_to_sell_kwh[row]),
            used_storage_kwh=float(self.used_storage_kwh[row]),
            free_storage_kwh=float(self.free_storage_kwh[row]),
            grid_fee=float(self.grid_fee[row]),
            unsettled_deviation_kwh=(
                self.unsettled_deviation_kwh[row] if self.unsettled_deviation_kwh else None
            ),
        )

    @classmethod
    def empty(cls) -> AssetBatch:
        z = np.zeros(0, dtype=np.float64)
        return cls([], [], [], [], np.zeros(0, dtype=np.int8), z, z, z, z, z, z, z, [])


@dataclass(frozen=True, slots=True)
class AssetView:
    """One row of an :class:`AssetBatch`."""

    uuid: str
    name: str
    aggregator: str
    parent_market: str
    kind: AssetKind
    energy_requirement_kwh: float
    available_energy_kwh: float
    energy_to_buy_kwh: float
    energy_to_sell_kwh: float
    used_storage_kwh: float
    free_storage_kwh: float
    grid_fee: float
    unsettled_deviation_kwh: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class MarketView:
    """A market (grid-operator role) as a market strategy sees it."""

    uuid: str
    name: str
    aggregator: str
    last_market_fee: float | None
    current_market_fee: float | None
    # last_market_stats as the event carried it: min/avg/median/max trade rate, volume.
    last_market_stats: dict[str, Any]


State = dict[str, Any]
"""A strategy's state for one asset or market: msgpack-serializable (str keys, plain values)."""
