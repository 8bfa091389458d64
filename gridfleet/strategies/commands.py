"""What a strategy says: intents in ct/kWh and kWh, not wire messages.

The platform turns these into the exchange's wire commands (total-cents prices) and validates
every one of them before anything is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gridfleet.strategies.context import FloatArray, IntArray, State


@dataclass(frozen=True, slots=True)
class Bid:
    energy_kwh: float
    rate: float  # ct/kWh; price on the wire = rate * energy
    replace_existing: bool = True
    time_slot: str | None = None  # None: the currently open spot market
    requirements: list[dict[str, Any]] | None = (
        None  # degrees of freedom, where the exchange takes them
    )


@dataclass(frozen=True, slots=True)
class Offer:
    energy_kwh: float
    rate: float
    replace_existing: bool = True
    time_slot: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteBid:
    order_id: str | None = None  # None deletes all of the asset's bids


@dataclass(frozen=True, slots=True)
class DeleteOffer:
    order_id: str | None = None


@dataclass(frozen=True, slots=True)
class ListBids:
    pass


@dataclass(frozen=True, slots=True)
class ListOffers:
    pass


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    pass


@dataclass(frozen=True, slots=True)
class SetEnergyForecast:
    energy_kwh: dict[str, float]  # time slot -> kWh


@dataclass(frozen=True, slots=True)
class SetEnergyMeasurement:
    energy_kwh: dict[str, float]


@dataclass(frozen=True, slots=True)
class GridFees:
    """Set a market's fee: exactly one of ``fee_const`` (ct/kWh) or ``fee_percent``."""

    fee_const: float | None = None
    fee_percent: float | None = None


@dataclass(frozen=True, slots=True)
class DsoMarketStats:
    """Ask for the market's DSO statistics; the answer reaches the strategy's state next round."""


Command = (
    Bid
    | Offer
    | DeleteBid
    | DeleteOffer
    | ListBids
    | ListOffers
    | DeviceInfo
    | SetEnergyForecast
    | SetEnergyMeasurement
    | GridFees
    | DsoMarketStats
)


@dataclass(slots=True)
class OrderArrays:
    """Bids and offers for many assets at once (the vectorized fast path).

    ``row`` indexes the :class:`~gridfleet.strategies.context.AssetBatch` the strategy was given.
    Every order replaces the asset's previous ones and goes to the open spot market.
    """

    row: IntArray
    is_bid: np.ndarray
    energy_kwh: FloatArray
    rate: FloatArray

    def __len__(self) -> int:
        return len(self.row)

    @classmethod
    def empty(cls) -> OrderArrays:
        return cls(
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=bool),
            np.zeros(0, dtype=np.float64),
            np.zeros(0, dtype=np.float64),
        )

    @classmethod
    def concat(cls, parts: list[OrderArrays]) -> OrderArrays:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.row for p in parts]),
            np.concatenate([p.is_bid for p in parts]),
            np.concatenate([p.energy_kwh for p in parts]),
            np.concatenate([p.rate for p in parts]),
        )


@dataclass(slots=True)
class StrategyResult:
    """A strategy's answer for one batch: orders, other commands and the new state.

    ``state`` holds only the entries that changed, keyed by asset (or market) uuid.
    """

    orders: OrderArrays = field(default_factory=OrderArrays.empty)
    commands: list[tuple[int, Command]] = field(default_factory=list)
    state: dict[str, State] = field(default_factory=dict)
