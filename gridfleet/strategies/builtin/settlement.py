"""Settlement: post each asset's unsettled energy deviation in the settlement market.

For every asset whose ``unsettled_deviation_kwh`` map has entries, and for every time slot in it
(in slot order), a positive deviation (the asset needs energy) is bid and a negative one (it has
energy to spare) is offered, on that ``time_slot``, at the configured rates. Deviations at or
below 2e-5 kWh are skipped. Assets without a map, or with an empty one, get nothing (the SDK
template crashes on an empty map). This applies whatever the asset's kind: the spot market's
"no bid on a PV" rule does not hold in settlement markets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import Field

from gridfleet.strategies.base import AssetStrategy, StrategyConfig
from gridfleet.strategies.commands import Bid, Command, Offer, StrategyResult
from gridfleet.strategies.context import AssetBatch, State, TickContext
from gridfleet.strategies.invariants import MIN_ORDER_ENERGY_KWH


class SettlementConfig(StrategyConfig):
    bid_rate: float = Field(default=5.0, ge=0, allow_inf_nan=False, description="ct/kWh")
    offer_rate: float = Field(default=10.0, ge=0, allow_inf_nan=False, description="ct/kWh")
    post_on_ticks: bool = False


class Settlement(AssetStrategy):
    """Bid positive and offer negative unsettled deviations, per time slot."""

    name = "settlement"
    Config = SettlementConfig
    config: SettlementConfig

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        result = StrategyResult()
        for row, deviations in enumerate(assets.unsettled_deviation_kwh):
            if not deviations:
                continue
            for time_slot in sorted(deviations):
                command = self._command(time_slot, deviations[time_slot])
                if command is not None:
                    result.commands.append((row, command))
        return result

    def on_tick(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        if self.config.post_on_ticks:
            return self.on_market(ctx, assets, state)
        return StrategyResult()

    def _command(self, time_slot: str, deviation: float) -> Command | None:
        if not math.isfinite(deviation):
            return None
        if deviation > MIN_ORDER_ENERGY_KWH:
            return Bid(energy_kwh=deviation, rate=self.config.bid_rate, time_slot=time_slot)
        if -deviation > MIN_ORDER_ENERGY_KWH:
            return Offer(energy_kwh=-deviation, rate=self.config.offer_rate, time_slot=time_slot)
        return None
