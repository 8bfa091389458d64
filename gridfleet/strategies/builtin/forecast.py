"""Forecasts and measurements for forecast-driven assets, from per-asset CSV profiles.

At each market event, every asset with a profile sends ``set_energy_forecast`` for the NEXT slot
and ``set_energy_measurement`` for the current one (the profile's measurement column, or its
forecast when there is none). Slots the profile does not cover are skipped. Profiles are read
when the strategy is built (format: :func:`~gridfleet.strategies.datafiles.load_profile`):
``profiles`` maps asset names to files, ``profile_dir`` adds every ``<asset name>.csv`` in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, model_validator

from gridfleet.strategies.base import AssetStrategy, StrategyConfig
from gridfleet.strategies.commands import SetEnergyForecast, SetEnergyMeasurement, StrategyResult
from gridfleet.strategies.context import AssetBatch, State, TickContext
from gridfleet.strategies.datafiles import DataFileError, EnergyProfile, load_profile


class ForecastConfig(StrategyConfig):
    profiles: dict[str, Path] = Field(default_factory=dict, description="asset name -> CSV")
    profile_dir: Path | None = Field(default=None, description="directory of <asset name>.csv")
    send_measurements: bool = True

    @model_validator(mode="after")
    def _some_profiles(self) -> ForecastConfig:
        if not self.profiles and self.profile_dir is None:
            raise ValueError("give profiles (asset name -> CSV) or profile_dir")
        return self


class Forecast(AssetStrategy):
    """Send each profiled asset's forecast (next slot) and measurement (current slot)."""

    name = "forecast"
    Config = ForecastConfig
    config: ForecastConfig

    def __init__(self, config: StrategyConfig | None = None) -> None:
        super().__init__(config)
        self.profiles: dict[str, EnergyProfile] = {}
        if self.config.profile_dir is not None:
            directory = self.config.profile_dir
            if not directory.is_dir():
                raise DataFileError(directory, "profile_dir is not a directory")
            for path in sorted(directory.glob("*.csv")):
                self.profiles[path.stem] = load_profile(path)
        for asset_name, path in self.config.profiles.items():
            self.profiles[asset_name] = load_profile(path)

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        result = StrategyResult()
        for row, asset_name in enumerate(assets.name):
            profile = self.profiles.get(asset_name)
            if profile is None:
                continue
            forecast = profile.forecast_for(ctx.next_market_slot)
            if forecast is not None:
                result.commands.append(
                    (row, SetEnergyForecast(energy_kwh={ctx.next_market_slot: forecast}))
                )
            if self.config.send_measurements:
                measured = profile.measurement_for(ctx.market_slot)
                if measured is not None:
                    result.commands.append(
                        (row, SetEnergyMeasurement(energy_kwh={ctx.market_slot: measured}))
                    )
        return result
