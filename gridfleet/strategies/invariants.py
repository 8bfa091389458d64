"""What every order a strategy emits must satisfy, as a checker usable by tests and the platform.

These are the exchange's own rejection rules (see ``tests/fixtures/protocol/README.md``): energy at or
below 2e-5 kWh, a negative price, a bid on a PV or an offer on a load in the spot market, a bid above
the load's requirement, an offer above the available energy. Built-in strategies never produce
such an order (they skip the asset instead); :func:`order_violations` proves it in the property
tests and can screen user strategies.

gridfleet's own upper bounds (:mod:`gridfleet.strategies.bounds`: energy, rate and the price
``rate * energy`` they make) are checked too. Built-in strategies do not skip an order for
breaking them: such inputs are not a normal state of an asset but garbage from outside, and the
platform's outbound validator refuses the order with its reason, counted and logged.

Settlement orders (a ``time_slot`` is set) are checked against the asset's unsettled deviation
for that slot instead: a positive deviation is bought, a negative one sold, never more than its
size. The spot rules on kinds do not apply there: a PV that produced less than it sold buys the
difference in the settlement market.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gridfleet.strategies.bounds import (
    MAX_ORDER_ENERGY_KWH,
    MAX_ORDER_PRICE_CT,
    MAX_RATE_CT_PER_KWH,
)
from gridfleet.strategies.commands import Bid, Offer, StrategyResult
from gridfleet.strategies.context import AssetBatch, AssetKind
from gridfleet.strategies.rules import MIN_ORDER_ENERGY_KWH

__all__ = ["MIN_ORDER_ENERGY_KWH", "Violation", "check_order", "order_violations"]

# Which kinds may bid / offer in the spot market, and the asset_info field that caps the energy.
_BID_CAP = {
    AssetKind.LOAD: "energy_requirement_kwh",
    AssetKind.SMART_METER: "energy_requirement_kwh",
    AssetKind.STORAGE: "energy_to_buy_kwh",
}
_OFFER_CAP = {
    AssetKind.PV: "available_energy_kwh",
    AssetKind.SMART_METER: "available_energy_kwh",
    AssetKind.STORAGE: "energy_to_sell_kwh",
}


@dataclass(frozen=True, slots=True)
class Violation:
    """One order that breaks a rule: the row, the asset uuid and what is wrong."""

    row: int
    uuid: str
    reason: str


def check_order(
    batch: AssetBatch,
    row: int,
    is_bid: bool,
    energy_kwh: float,
    rate: float,
    time_slot: str | None = None,
) -> str | None:
    """Why this order would be refused, or ``None`` if it is acceptable."""
    side = "bid" if is_bid else "offer"
    if not 0 <= row < len(batch):
        return f"{side} for row {row} outside the batch of {len(batch)}"
    if not (math.isfinite(energy_kwh) and energy_kwh > MIN_ORDER_ENERGY_KWH):
        return f"{side} energy {energy_kwh!r} kWh not above {MIN_ORDER_ENERGY_KWH}"
    if not (math.isfinite(rate) and rate >= 0):
        return f"{side} rate {rate!r} ct/kWh is negative or not finite"
    if energy_kwh > MAX_ORDER_ENERGY_KWH:
        return f"{side} energy {energy_kwh!r} kWh above the bound of {MAX_ORDER_ENERGY_KWH:g}"
    if rate > MAX_RATE_CT_PER_KWH:
        return f"{side} rate {rate!r} ct/kWh above the bound of {MAX_RATE_CT_PER_KWH:g}"
    if not rate * energy_kwh <= MAX_ORDER_PRICE_CT:
        return f"{side} price {rate * energy_kwh!r} ct above the bound of {MAX_ORDER_PRICE_CT:g}"
    if time_slot is not None:
        deviations = batch.unsettled_deviation_kwh[row] if batch.unsettled_deviation_kwh else None
        deviation = (deviations or {}).get(time_slot)
        if deviation is None:
            return f"settlement {side} on {time_slot} without an unsettled deviation there"
        if (deviation > 0) != is_bid:
            return f"settlement {side} on {time_slot} against a deviation of {deviation} kWh"
        if energy_kwh > abs(deviation):
            return f"settlement {side} of {energy_kwh} kWh above the deviation {deviation} kWh"
        return None
    kind = AssetKind(int(batch.kind[row]))
    caps = _BID_CAP if is_bid else _OFFER_CAP
    if kind not in caps:
        return f"{side} on a {kind.name} in the spot market"
    cap = float(getattr(batch, caps[kind])[row])
    if energy_kwh > cap:
        return f"{side} of {energy_kwh} kWh above the {kind.name}'s {caps[kind]} {cap}"
    return None


def order_violations(batch: AssetBatch, result: StrategyResult) -> list[Violation]:
    """Every order of ``result`` (arrays and Bid/Offer commands) that breaks a rule."""
    found: list[Violation] = []
    orders = result.orders
    for row, is_bid, energy, rate in zip(
        orders.row.tolist(),
        np.asarray(orders.is_bid, dtype=bool).tolist(),
        orders.energy_kwh.tolist(),
        orders.rate.tolist(),
        strict=True,
    ):
        reason = check_order(batch, row, is_bid, energy, rate)
        if reason:
            found.append(Violation(row, _uuid(batch, row), reason))
    for row, command in result.commands:
        if isinstance(command, Bid | Offer):
            is_bid = isinstance(command, Bid)
            reason = check_order(
                batch, row, is_bid, command.energy_kwh, command.rate, command.time_slot
            )
            if reason is None and isinstance(command, Bid) and command.requirements:
                reason = _check_requirements(command)
            if reason:
                found.append(Violation(row, _uuid(batch, row), reason))
    return found


def _check_requirements(bid: Bid) -> str | None:
    for requirement in bid.requirements or []:
        energy = requirement.get("energy")
        if energy is not None and not (0 < energy <= bid.energy_kwh):
            return f"requirement energy {energy} kWh outside (0, {bid.energy_kwh}]"
        price = requirement.get("price")
        if price is not None and not (math.isfinite(price) and 0 <= price <= MAX_ORDER_PRICE_CT):
            return f"requirement price {price} is negative, not finite or above the bound"
    return None


def _uuid(batch: AssetBatch, row: int) -> str:
    return batch.uuid[row] if 0 <= row < len(batch) else "?"
