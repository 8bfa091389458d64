"""The strategy interface: asset strategies, the per-asset adapter, and market strategies.

A strategy is a plain object built once from a validated pydantic config; evaluating it is a pure
function of its inputs: the tick's :class:`TickContext`, the shard's assets (or markets) and their
previous state. It returns commands and the new state. No I/O, no globals, no clock, so the same
inputs give the same outputs in any shard, process or replay.

State contract (what the platform does with ``StrategyResult.state`` / ``MarketResult.state``):

* the state passed in maps uuid -> :data:`State`; an asset or market without stored state is
  simply absent;
* each entry returned replaces the stored state of that uuid wholesale; uuids not returned keep
  their stored state;
* every state must be msgpack-serializable (str keys, plain values: no tuples, sets or numpy).

DSO statistics: a :class:`MarketStrategy` may emit :class:`DsoMarketStats` for a market. The
platform stores the exchange's answer, the ``market_stats`` dict of the ``dso_market_stats``
response (``min/max/avg/median_trade_rate``, ``total_traded_energy_kWh``, ``market_bill``,
``market_fee_revenue``, ``area_throughput: {"import": kWh, "export": kWh}``, ...), into that
market's state under the key :data:`DSO_MARKET_STATS_KEY` (``"dso_market_stats"``), so the strategy
reads it on its next call (a tick or the next market event). A strategy that has used the answer
should drop the key from the state it returns, so that the same answer is not counted twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from gridfleet.strategies.commands import Command, StrategyResult
from gridfleet.strategies.context import AssetBatch, AssetView, MarketView, State, TickContext

DSO_MARKET_STATS_KEY = "dso_market_stats"
"""Key under which the platform stores a market's ``dso_market_stats`` answer in its state."""


class StrategyConfig(BaseModel):
    """Base of every strategy's configuration: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrategyError(Exception):
    """A strategy cannot be built or evaluated; the message says which strategy and why."""


class _Strategy:
    """What asset and market strategies share: a registry name and a validated config."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig

    def __init__(self, config: StrategyConfig | None = None) -> None:
        if config is None:
            config = self.Config()
        elif not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class AssetStrategy(_Strategy, ABC):
    """A strategy for the assets of a shard, evaluated over the whole batch at once.

    Subclasses implement :meth:`on_market` (the market event, tick index 0) and may override
    :meth:`on_tick` (every dispatched tick; by default it does nothing). Built-in strategies
    return their bids and offers as :class:`~gridfleet.strategies.commands.OrderArrays` (numpy
    over the whole batch); anything else goes to ``StrategyResult.commands`` as ``(row, command)``.
    """

    @abstractmethod
    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        """Decide at the market event (a new slot opened)."""

    def on_tick(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        """Decide at a tick; the default keeps the orders of the market event."""
        return StrategyResult()

    def evaluate(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        """Dispatch to :meth:`on_market` or :meth:`on_tick`: what the pipeline calls."""
        if ctx.is_market_event:
            return self.on_market(ctx, assets, state)
        return self.on_tick(ctx, assets, state)


class PerAssetStrategy(AssetStrategy):
    """Adapter for strategies written one asset at a time (simple, slower than vectorized).

    Subclasses implement :meth:`decide`; it is called for every row at market events and ticks
    (``ctx.is_market_event`` tells which). Its commands go to ``StrategyResult.commands`` in the
    order returned; a returned state (not ``None``) replaces the asset's state.
    """

    @abstractmethod
    def decide(
        self, ctx: TickContext, asset: AssetView, state: State
    ) -> tuple[list[Command], State | None]:
        """Commands for one asset and its new state (``None``: unchanged). ``state`` may be {}."""

    def _run(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        result = StrategyResult()
        for row in range(len(assets)):
            asset = assets.view(row)
            commands, new_state = self.decide(ctx, asset, state.get(asset.uuid, {}))
            result.commands.extend((row, command) for command in commands)
            if new_state is not None:
                result.state[asset.uuid] = new_state
        return result

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        return self._run(ctx, assets, state)

    def on_tick(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        return self._run(ctx, assets, state)


@dataclass(slots=True)
class MarketResult:
    """A market strategy's answer: ``(market_uuid, command)`` pairs and the changed states."""

    commands: list[tuple[str, Command]] = field(default_factory=list)
    state: dict[str, State] = field(default_factory=dict)


class MarketStrategy(_Strategy, ABC):
    """A grid-operator strategy for the markets an aggregator manages.

    Typical commands: :class:`~gridfleet.strategies.commands.GridFees` (applies to the next slot)
    and :class:`~gridfleet.strategies.commands.DsoMarketStats` (answer arrives in the state, see
    the module docstring).
    """

    @abstractmethod
    def on_market(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        """Decide at the market event."""

    def on_tick(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        """Decide at a tick; the default does nothing."""
        return MarketResult()

    def evaluate(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        """Dispatch to :meth:`on_market` or :meth:`on_tick`: what the pipeline calls."""
        if ctx.is_market_event:
            return self.on_market(ctx, markets, state)
        return self.on_tick(ctx, markets, state)


Strategy = AssetStrategy | MarketStrategy
