"""Built-in strategies, matching the official SDK's templates. ``BUILTINS`` maps name -> class."""

from __future__ import annotations

from gridfleet.strategies.base import AssetStrategy, MarketStrategy
from gridfleet.strategies.builtin.composite import Composite
from gridfleet.strategies.builtin.fixed_rate import FixedRate
from gridfleet.strategies.builtin.forecast import Forecast
from gridfleet.strategies.builtin.grid_fees import (
    GridFeeAziiz,
    GridFeeConstant,
    GridFeePercent,
    GridFeeTou,
)
from gridfleet.strategies.builtin.linear_ramp import LinearRamp, LinearRampPerAsset
from gridfleet.strategies.builtin.requirements import Requirements
from gridfleet.strategies.builtin.settlement import Settlement

BUILTINS: dict[str, type[AssetStrategy] | type[MarketStrategy]] = {
    cls.name: cls
    for cls in (
        FixedRate,
        LinearRamp,
        LinearRampPerAsset,
        Requirements,
        Forecast,
        Settlement,
        Composite,
        GridFeeConstant,
        GridFeePercent,
        GridFeeTou,
        GridFeeAziiz,
    )
}

__all__ = [
    "BUILTINS",
    "Composite",
    "FixedRate",
    "Forecast",
    "GridFeeAziiz",
    "GridFeeConstant",
    "GridFeePercent",
    "GridFeeTou",
    "LinearRamp",
    "LinearRampPerAsset",
    "Requirements",
    "Settlement",
]
