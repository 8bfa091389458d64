"""Vectorized spot orders for a whole batch, with the exchange's rules built in.

Every built-in asset strategy ends here: it computes one rate per side and kind (a scalar or one
value per row) and :func:`spot_orders` picks the energy each kind may trade, clamps negative rates
to 0 and skips every order the exchange would refuse (energy <= 2e-5 kWh, non-finite values).
Values beyond gridfleet's bounds (:mod:`gridfleet.strategies.bounds`, e.g. an energy of 1e308
kWh from a broken event) are not skipped here: the outbound validator refuses them by name.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gridfleet.strategies.commands import OrderArrays
from gridfleet.strategies.context import AssetBatch, AssetKind, FloatArray
from gridfleet.strategies.invariants import MIN_ORDER_ENERGY_KWH

Rate = float | FloatArray
BoolArray = npt.NDArray[np.bool_]


def spot_orders(
    assets: AssetBatch,
    *,
    load_bid_rate: Rate,
    pv_offer_rate: Rate,
    storage_bid_rate: Rate,
    storage_offer_rate: Rate,
    include: BoolArray | None = None,
) -> OrderArrays:
    """Bids and offers for every asset of ``assets`` (bids first, then offers, in row order).

    Loads bid their ``energy_requirement_kwh`` at ``load_bid_rate``; PVs offer their
    ``available_energy_kwh`` at ``pv_offer_rate``; storages bid ``energy_to_buy_kwh`` and offer
    ``energy_to_sell_kwh``; smart meters do both, at the load and PV rates. ``include`` masks
    rows out (``False``: no order for that row).
    """
    kind = assets.kind
    is_storage = kind == AssetKind.STORAGE
    is_meter = kind == AssetKind.SMART_METER
    consumes = (kind == AssetKind.LOAD) | is_meter
    produces = (kind == AssetKind.PV) | is_meter

    bid_energy = np.where(
        is_storage, assets.energy_to_buy_kwh, np.where(consumes, assets.energy_requirement_kwh, 0.0)
    )
    offer_energy = np.where(
        is_storage, assets.energy_to_sell_kwh, np.where(produces, assets.available_energy_kwh, 0.0)
    )
    # Rates below 0 are refused by the exchange: a ramp that starts below zero starts at zero.
    bid_rate = np.maximum(np.where(is_storage, storage_bid_rate, load_bid_rate), 0.0)
    offer_rate = np.maximum(np.where(is_storage, storage_offer_rate, pv_offer_rate), 0.0)

    bid_ok = (bid_energy > MIN_ORDER_ENERGY_KWH) & np.isfinite(bid_rate) & np.isfinite(bid_energy)
    offer_ok = (
        (offer_energy > MIN_ORDER_ENERGY_KWH) & np.isfinite(offer_rate) & np.isfinite(offer_energy)
    )
    if include is not None:
        bid_ok &= include
        offer_ok &= include

    bid_rows = np.flatnonzero(bid_ok)
    offer_rows = np.flatnonzero(offer_ok)
    n_bids = len(bid_rows)
    is_bid = np.zeros(n_bids + len(offer_rows), dtype=bool)
    is_bid[:n_bids] = True
    return OrderArrays(
        row=np.concatenate([bid_rows, offer_rows]).astype(np.int64, copy=False),
        is_bid=is_bid,
        energy_kwh=np.concatenate([bid_energy[bid_rows], offer_energy[offer_rows]]),
        rate=np.concatenate([bid_rate[bid_rows], offer_rate[offer_rows]]),
    )
