"""Composite: run several asset strategies on the same batch, one after the other.

The SDK's templates often do several things per slot (forecasts, measurements, settlement and
spot orders); ``composite`` combines built-in or user strategies instead of writing a new one.
Commands keep the order of the children; order arrays are concatenated. Each child sees and
writes only its own part of an asset's state, stored under ``"<index>:<name>"``. Give at most one
child that posts spot orders: every spot order replaces the asset's previous ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gridfleet.strategies.base import AssetStrategy, StrategyConfig
from gridfleet.strategies.commands import OrderArrays, StrategyResult
from gridfleet.strategies.context import AssetBatch, State, TickContext


class ChildSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="registered name or dotted path of an asset strategy")
    params: dict[str, Any] = Field(default_factory=dict)


class CompositeConfig(StrategyConfig):
    strategies: list[ChildSpec] = Field(min_length=1)


class Composite(AssetStrategy):
    """Several asset strategies evaluated in sequence on the same batch."""

    name = "composite"
    Config = CompositeConfig
    config: CompositeConfig

    def __init__(self, config: StrategyConfig | None = None) -> None:
        super().__init__(config)
        from gridfleet.strategies import registry  # late: the registry imports the built-ins

        self.children: list[tuple[str, AssetStrategy]] = []
        for i, spec in enumerate(self.config.strategies):
            child = registry.build(spec.name, spec.params)
            if not isinstance(child, AssetStrategy):
                raise TypeError(f"composite: {spec.name!r} is not an asset strategy")
            self.children.append((f"{i}:{spec.name}", child))

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        return self._run(lambda child, st: child.on_market(ctx, assets, st), state)

    def on_tick(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        return self._run(lambda child, st: child.on_tick(ctx, assets, st), state)

    def _run(
        self,
        call: Callable[[AssetStrategy, Mapping[str, State]], StrategyResult],
        state: Mapping[str, State],
    ) -> StrategyResult:
        orders: list[OrderArrays] = []
        result = StrategyResult()
        for key, child in self.children:
            child_state = {uuid: st[key] for uuid, st in state.items() if key in st}
            part = call(child, child_state)
            orders.append(part.orders)
            result.commands.extend(part.commands)
            for uuid, new in part.state.items():
                merged = result.state.get(uuid) or dict(state.get(uuid, {}))
                merged[key] = new
                result.state[uuid] = merged
        result.orders = OrderArrays.concat(orders)
        return result
