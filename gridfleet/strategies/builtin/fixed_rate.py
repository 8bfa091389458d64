"""Fixed rate: every asset trades all it can at one configured rate.

Loads bid their ``energy_requirement_kWh``, PVs offer their ``available_energy_kWh``, storages bid
``energy_to_buy`` and offer ``energy_to_sell`` (smart meters: both sides), at ``bid_rate`` /
``offer_rate`` (both default to ``rate``). Orders are re-posted at every tick so that their
energy follows what is still left to trade.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from gridfleet.strategies.base import AssetStrategy, StrategyConfig
from gridfleet.strategies.builtin.orders import spot_orders
from gridfleet.strategies.commands import StrategyResult
from gridfleet.strategies.context import AssetBatch, State, TickContext


class FixedRateConfig(StrategyConfig):
    rate: float = Field(default=10.0, ge=0, allow_inf_nan=False, description="ct/kWh")
    bid_rate: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    offer_rate: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    post_on_ticks: bool = True


class FixedRate(AssetStrategy):
    """Bid and offer everything at a fixed rate."""

    name = "fixed_rate"
    Config = FixedRateConfig
    config: FixedRateConfig

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        bid = self.config.rate if self.config.bid_rate is None else self.config.bid_rate
        offer = self.config.rate if self.config.offer_rate is None else self.config.offer_rate
        orders = spot_orders(
            assets,
            load_bid_rate=bid,
            pv_offer_rate=offer,
            storage_bid_rate=bid,
            storage_offer_rate=offer,
        )
        return StrategyResult(orders=orders)

    def on_tick(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        if not self.config.post_on_ticks:
            return StrategyResult()
        return self.on_market(ctx, assets, state)
