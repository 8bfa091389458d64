"""Grid-operator strategies: set each managed market's fee for the next slot.

All of them act at the market event (a fee sent during a slot applies from the next slot on) and
only on the markets they know: ``markets`` in the config restricts them further by name.

* ``grid_fee_constant``: a constant fee in ct/kWh, optionally per market;
* ``grid_fee_percent``: a percentage fee, optionally per market;
* ``grid_fee_tou``: time of use, the fee of the NEXT slot's start time in ToU.csv;
* ``grid_fee_aziiz``: the moving average of ``|import - export|`` over the last slots, looked up
  in aziiz.json's thresholds (see :class:`GridFeeAziiz`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import Field

from gridfleet.strategies.base import (
    DSO_MARKET_STATS_KEY,
    MarketResult,
    MarketStrategy,
    StrategyConfig,
)
from gridfleet.strategies.commands import DsoMarketStats, GridFees
from gridfleet.strategies.context import MarketView, State, TickContext
from gridfleet.strategies.datafiles import (
    ABOVE_LAST_THRESHOLD_FEE,
    AziizTable,
    TouTable,
    load_aziiz,
    load_tou,
    slot_clock,
)

FeeConst = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FeePercent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


class MarketFilterConfig(StrategyConfig):
    markets: list[str] | None = Field(
        default=None, description="market names to manage; None: every market given"
    )


def _selected(config: MarketFilterConfig, markets: list[MarketView]) -> list[MarketView]:
    if config.markets is None:
        return markets
    wanted = set(config.markets)
    return [m for m in markets if m.name in wanted]


# ---------------------------------------------------------------------------- constant, percent


class GridFeeConstantConfig(MarketFilterConfig):
    fee_const: float = Field(ge=0, allow_inf_nan=False, description="ct/kWh")
    per_market: dict[str, FeeConst] = Field(default_factory=dict, description="name -> ct/kWh")


class GridFeeConstant(MarketStrategy):
    """The same constant fee (ct/kWh) every slot, per market if configured."""

    name = "grid_fee_constant"
    Config = GridFeeConstantConfig
    config: GridFeeConstantConfig

    def on_market(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        result = MarketResult()
        for market in _selected(self.config, markets):
            fee = self.config.per_market.get(market.name, self.config.fee_const)
            result.commands.append((market.uuid, GridFees(fee_const=fee)))
        return result


class GridFeePercentConfig(MarketFilterConfig):
    fee_percent: float = Field(ge=0, le=100, allow_inf_nan=False, description="% of the price")
    per_market: dict[str, FeePercent] = Field(default_factory=dict, description="name -> %")


class GridFeePercent(MarketStrategy):
    """The same percentage fee every slot, per market if configured."""

    name = "grid_fee_percent"
    Config = GridFeePercentConfig
    config: GridFeePercentConfig

    def on_market(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        result = MarketResult()
        for market in _selected(self.config, markets):
            fee = self.config.per_market.get(market.name, self.config.fee_percent)
            result.commands.append((market.uuid, GridFees(fee_percent=fee)))
        return result


# ---------------------------------------------------------------------------------- time of use


class GridFeeTouConfig(MarketFilterConfig):
    path: Path = Field(description="ToU.csv: ';'-separated, decimal comma, one column per market")


class GridFeeTou(MarketStrategy):
    """Time of use: at each market event, the fee listed for the next slot's start time.

    Markets without a column, and times the file does not list, get no command (their fee
    stays as it is).
    """

    name = "grid_fee_tou"
    Config = GridFeeTouConfig
    config: GridFeeTouConfig

    def __init__(self, config: StrategyConfig | None = None) -> None:
        super().__init__(config)
        self.table: TouTable = load_tou(self.config.path)

    def on_market(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        result = MarketResult()
        clock = slot_clock(ctx.next_market_slot)
        for market in _selected(self.config, markets):
            fee = self.table.fee(market.name, clock)
            if fee is not None:
                result.commands.append((market.uuid, GridFees(fee_const=fee)))
        return result


# ---------------------------------------------------------------------------------------- Aziiz


class GridFeeAziizConfig(MarketFilterConfig):
    path: Path = Field(description="aziiz.json: ascending thresholds and fees per market")
    look_back: int = Field(default=4, ge=1, description="slots in the moving average")
    above_last_fee: float = Field(default=ABOVE_LAST_THRESHOLD_FEE, ge=0, allow_inf_nan=False)


HISTORY_KEY = "throughput_history"
"""State key of the Aziiz strategy: the last ``look_back`` values of |import - export| (kWh)."""


class GridFeeAziiz(MarketStrategy):
    """Aziiz: a fee stepped by the recent imbalance through the market.

    At each market event it asks for the market's ``dso_market_stats``. When the answer shows up
    in the state (key ``"dso_market_stats"``, at a tick or the next market event), it appends
    ``|import - export|`` of ``area_throughput`` to a history of the last ``look_back`` slots
    (kept in the state as a list of floats), and sets the fee of the first threshold at or above
    the history's mean (``above_last_fee`` above the last threshold). It also re-sends that fee
    at each market event once it has a history. Before the first answer it sets no fee.

    The SDK template appends the same dict object every slot, so its "average" is only the
    latest value; this one is a real moving average, of absolute values.
    """

    name = "grid_fee_aziiz"
    Config = GridFeeAziizConfig
    config: GridFeeAziizConfig

    def __init__(self, config: StrategyConfig | None = None) -> None:
        super().__init__(config)
        self.table: AziizTable = load_aziiz(self.config.path, self.config.above_last_fee)

    def _markets(self, markets: list[MarketView]) -> list[MarketView]:
        return [m for m in _selected(self.config, markets) if m.name in self.table.steps]

    def on_market(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        result = MarketResult()
        for market in self._markets(markets):
            old = state.get(market.uuid, {})
            history, consumed = self._history(old)
            result.commands.append((market.uuid, DsoMarketStats()))
            if history:
                fee = self.fee(market.name, history)
                result.commands.append((market.uuid, GridFees(fee_const=fee)))
            if consumed:
                result.state[market.uuid] = _new_state(old, history)
        return result

    def on_tick(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        result = MarketResult()
        for market in self._markets(markets):
            old = state.get(market.uuid, {})
            history, consumed = self._history(old)
            if not consumed:
                continue
            if history:
                fee = self.fee(market.name, history)
                result.commands.append((market.uuid, GridFees(fee_const=fee)))
            result.state[market.uuid] = _new_state(old, history)
        return result

    def fee(self, market_name: str, history: list[float]) -> float:
        """The fee for a history of |import - export| values (the mean picks the step)."""
        value = sum(history) / len(history)
        fee = self.table.fee(market_name, value)
        assert fee is not None  # _markets() keeps only markets with a table
        return fee

    def _history(self, state: State) -> tuple[list[float], bool]:
        """The history with the stored stats answer (if any) appended; whether one was used."""
        history = [float(v) for v in state.get(HISTORY_KEY, [])]
        stats = state.get(DSO_MARKET_STATS_KEY)
        value = _imbalance(stats) if isinstance(stats, dict) else None
        if value is not None:
            history.append(value)
        return history[-self.config.look_back :], stats is not None


def _imbalance(stats: dict) -> float | None:
    """``|import - export|`` from a ``market_stats`` answer, None if it has no throughput."""
    throughput = stats.get("area_throughput")
    if not isinstance(throughput, dict):
        return None
    imported, exported = throughput.get("import"), throughput.get("export")
    if not isinstance(imported, int | float) or not isinstance(exported, int | float):
        return None
    value = abs(float(imported) - float(exported))
    return value if value == value and value != float("inf") else None


def _new_state(old: State, history: list[float]) -> State:
    # Drop the consumed answer so it is not counted again; keep anything else stored there.
    new = {k: v for k, v in old.items() if k != DSO_MARKET_STATS_KEY}
    new[HISTORY_KEY] = history
    return new
