"""Degrees of freedom: loads bid with requirements (trading partners, energy types, cap, rate).

Requirements come from a requirements.json (the SDK's format, see
:func:`~gridfleet.strategies.datafiles.load_requirements`), per load name. Every load bids its
whole ``energy_requirement_kWh`` at ``rate``; a load listed in the file attaches one requirement
per entry (the SDK template keeps only the last entry: a bug):

``{"trading_partners": [uuids], "energy_type": [...], "energy": min(Energy, bid energy),
"price": Rate * energy}`` (``"None"`` energy: the bid's energy; ``"None"`` rate: the bid's rate).

Trading partners are named in the file and sent as uuids. Names resolve through ``known_assets``
in the config (checked at construction when given) and ``TickContext.asset_uuids_by_name``; never
through the shard's own assets, so the result does not depend on how the fleet was sharded. An
unknown partner is a :class:`~gridfleet.strategies.base.StrategyError` naming file, entry and
the known names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from gridfleet.strategies.base import AssetStrategy, StrategyConfig, StrategyError
from gridfleet.strategies.builtin.orders import spot_orders
from gridfleet.strategies.commands import Bid, StrategyResult
from gridfleet.strategies.context import AssetBatch, AssetKind, State, TickContext
from gridfleet.strategies.datafiles import (
    DataFileError,
    Requirement,
    RequirementsFile,
    load_requirements,
)
from gridfleet.strategies.invariants import MIN_ORDER_ENERGY_KWH


class RequirementsConfig(StrategyConfig):
    path: Path = Field(description="requirements.json")
    rate: float = Field(default=10.0, ge=0, allow_inf_nan=False, description="bid rate, ct/kWh")
    known_assets: dict[str, str] = Field(
        default_factory=dict, description="asset name -> uuid, for trading partners"
    )
    post_on_ticks: bool = False


class Requirements(AssetStrategy):
    """Loads bid their requirement at a fixed rate, with degrees of freedom attached."""

    name = "requirements"
    Config = RequirementsConfig
    config: RequirementsConfig

    def __init__(self, config: StrategyConfig | None = None) -> None:
        super().__init__(config)
        self.file: RequirementsFile = load_requirements(self.config.path)
        if self.config.known_assets:
            for requirements in self.file.by_load.values():
                for requirement in requirements:
                    for partner in requirement.trading_partners:
                        if partner not in self.config.known_assets:
                            raise self._unknown_partner(
                                requirement, partner, self.config.known_assets
                            )

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        known: dict[str, str] = dict(ctx.asset_uuids_by_name or {})
        known.update(self.config.known_assets)
        rate = self.config.rate
        consumes = (assets.kind == AssetKind.LOAD) | (assets.kind == AssetKind.SMART_METER)
        listed = np.array([name in self.file.by_load for name in assets.name], dtype=bool)
        # Plain loads go through the vectorized path; listed ones need a Bid carrying requirements.
        result = StrategyResult(
            orders=spot_orders(
                assets,
                load_bid_rate=rate,
                pv_offer_rate=np.nan,  # NaN rates are skipped: this strategy only bids
                storage_bid_rate=np.nan,
                storage_offer_rate=np.nan,
                include=consumes & ~listed,
            )
        )
        for row in np.flatnonzero(consumes & listed).tolist():
            energy = float(assets.energy_requirement_kwh[row])
            if not energy > MIN_ORDER_ENERGY_KWH or not np.isfinite(energy):
                continue
            reqs = [
                self._requirement(r, energy, rate, known)
                for r in self.file.by_load[assets.name[row]]
            ]
            result.commands.append(
                (row, Bid(energy_kwh=energy, rate=rate, requirements=reqs or None))
            )
        return result

    def on_tick(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        if self.config.post_on_ticks:
            return self.on_market(ctx, assets, state)
        return StrategyResult()

    def _requirement(
        self, requirement: Requirement, energy: float, rate: float, known: Mapping[str, str]
    ) -> dict[str, Any]:
        partners = []
        for name in requirement.trading_partners:
            uuid = known.get(name)
            if uuid is None:
                raise self._unknown_partner(requirement, name, known)
            partners.append(uuid)
        req_energy = (
            energy if requirement.energy_kwh is None else min(requirement.energy_kwh, energy)
        )
        req_rate = rate if requirement.rate is None else requirement.rate
        return {
            "trading_partners": partners,
            "energy_type": list(requirement.energy_types),
            "energy": req_energy,
            "price": req_rate * req_energy,
        }

    def _unknown_partner(
        self, requirement: Requirement, name: str, known: Mapping[str, str]
    ) -> StrategyError:
        names = sorted(known)
        shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
        return DataFileError(
            self.file.path,
            f"unknown trading partner {name!r}; known asset names: {shown or 'none'}",
            json_path=requirement.json_path,
        )
