"""The SDK's "basic strategies": rates ramp linearly over the slot between F and M.

With F the feed-in tariff, M the market maker rate, f the asset's grid fee along the path to the
Market Maker, N the ticks per slot and i the tick index (0 at the market event):

* loads bid ``F - f + (M + 2f - F) * i/N`` for ``i < N-2`` and ``M + f`` for the last two ticks;
* PVs offer ``M + f - (M + 2f - F) * i/N`` for ``i < N-2`` and ``F - f`` for the last two;
* storages, with ``med = (M - F)/2 + F``, bid ``(F - f) + (med - (F - f)) * i/N`` and offer
  ``(M + f) - (M + f - med) * i/N`` at every tick;
* smart meters bid like loads and offer like PVs.

Rates below 0 are clamped to 0 (the exchange refuses negative prices). Each order replaces the
asset's previous one. The strategy keeps no state: every tick is computed from the tick's inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple, TypeVar

from pydantic import Field

from gridfleet.strategies.base import AssetStrategy, PerAssetStrategy, StrategyConfig
from gridfleet.strategies.builtin.orders import spot_orders
from gridfleet.strategies.commands import Bid, Command, Offer, StrategyResult
from gridfleet.strategies.context import (
    AssetBatch,
    AssetKind,
    AssetView,
    FloatArray,
    State,
    TickContext,
)
from gridfleet.strategies.invariants import MIN_ORDER_ENERGY_KWH

FeeT = TypeVar("FeeT", float, FloatArray)


class RampRates(NamedTuple):
    """The four rates of one tick (unclamped), for one fee or an array of fees."""

    load_bid: float | FloatArray
    pv_offer: float | FloatArray
    storage_bid: float | FloatArray
    storage_offer: float | FloatArray


def ramp_rates(
    feed_in_tariff: float, market_maker: float, fee: FeeT, index: int, num_ticks: int
) -> RampRates:
    """The ramp's rates at tick ``index`` of ``num_ticks``; ``fee`` may be a numpy array."""
    big_f, big_m, f = feed_in_tariff, market_maker, fee
    step = index / num_ticks
    if index < num_ticks - 2:
        load_bid = big_f - f + (big_m + 2 * f - big_f) * step
        pv_offer = big_m + f - (big_m + 2 * f - big_f) * step
    else:
        # The SDK template jumps to the far end for the last two ticks, to clear what is left.
        load_bid = big_m + f
        pv_offer = big_f - f
    med = (big_m - big_f) / 2 + big_f
    storage_bid = (big_f - f) + (med - (big_f - f)) * step
    storage_offer = (big_m + f) - (big_m + f - med) * step
    return RampRates(load_bid, pv_offer, storage_bid, storage_offer)


class LinearRampConfig(StrategyConfig):
    num_ticks: int | None = Field(
        default=None, ge=3, description="ticks per slot; None takes the event's num_ticks"
    )


def _ramp_index(config: LinearRampConfig, ctx: TickContext) -> tuple[int, int]:
    num_ticks = config.num_ticks or ctx.num_ticks or 10
    if ctx.is_market_event:
        return 0, num_ticks
    return min(max(ctx.tick_index, 0), num_ticks - 1), num_ticks


class LinearRamp(AssetStrategy):
    """Linear-ramp bids and offers for every asset of the batch, vectorized."""

    name = "linear_ramp"
    Config = LinearRampConfig
    config: LinearRampConfig

    def _orders(self, ctx: TickContext, assets: AssetBatch) -> StrategyResult:
        index, num_ticks = _ramp_index(self.config, ctx)
        rates = ramp_rates(
            ctx.feed_in_tariff_rate, ctx.market_maker_rate, assets.grid_fee, index, num_ticks
        )
        orders = spot_orders(
            assets,
            load_bid_rate=rates.load_bid,
            pv_offer_rate=rates.pv_offer,
            storage_bid_rate=rates.storage_bid,
            storage_offer_rate=rates.storage_offer,
        )
        return StrategyResult(orders=orders)

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        return self._orders(ctx, assets)

    def on_tick(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        return self._orders(ctx, assets)


class LinearRampPerAsset(PerAssetStrategy):
    """The same ramp written one asset at a time: the reference and the per-asset benchmark."""

    name = "linear_ramp_per_asset"
    Config = LinearRampConfig
    config: LinearRampConfig

    def decide(
        self, ctx: TickContext, asset: AssetView, state: State
    ) -> tuple[list[Command], State | None]:
        index, num_ticks = _ramp_index(self.config, ctx)
        rates = ramp_rates(
            ctx.feed_in_tariff_rate, ctx.market_maker_rate, asset.grid_fee, index, num_ticks
        )
        kind = asset.kind
        commands: list[Command] = []
        if kind is AssetKind.STORAGE:
            bid = (asset.energy_to_buy_kwh, float(rates.storage_bid))
            offer = (asset.energy_to_sell_kwh, float(rates.storage_offer))
        else:
            consumes = kind in (AssetKind.LOAD, AssetKind.SMART_METER)
            produces = kind in (AssetKind.PV, AssetKind.SMART_METER)
            bid = (asset.energy_requirement_kwh if consumes else 0.0, float(rates.load_bid))
            offer = (asset.available_energy_kwh if produces else 0.0, float(rates.pv_offer))
        if _tradable(*bid):
            commands.append(Bid(energy_kwh=bid[0], rate=max(0.0, bid[1])))
        if _tradable(*offer):
            commands.append(Offer(energy_kwh=offer[0], rate=max(0.0, offer[1])))
        return commands, None


def _tradable(energy_kwh: float, rate: float) -> bool:
    return math.isfinite(energy_kwh) and energy_kwh > MIN_ORDER_ENERGY_KWH and math.isfinite(rate)
