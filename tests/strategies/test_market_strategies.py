"""Grid-operator strategies: constant, percent, time of use and Aziiz (shipped data files)."""

from __future__ import annotations

import msgpack
import pytest

from gridfleet.strategies import registry
from gridfleet.strategies.base import DSO_MARKET_STATS_KEY, MarketResult
from gridfleet.strategies.builtin.grid_fees import HISTORY_KEY
from gridfleet.strategies.commands import DsoMarketStats, GridFees
from tests.strategies.helpers import STRATEGY_DATA, ctx, market

MARKETS = [market("Grid"), market("Community"), market("House 1")]


def test_constant_fee_per_market():
    strategy = registry.build(
        "grid_fee_constant",
        {"fee_const": 5, "per_market": {"Grid": 2.5}, "markets": ["Grid", "Community"]},
    )
    result = strategy.evaluate(ctx(0), MARKETS, {})
    assert result.commands == [
        ("m-Grid", GridFees(fee_const=2.5)),
        ("m-Community", GridFees(fee_const=5)),
    ]
    assert strategy.evaluate(ctx(4), MARKETS, {}).commands == []  # fees are set once per slot


def test_percent_fee():
    strategy = registry.build("grid_fee_percent", {"fee_percent": 3})
    assert strategy.evaluate(ctx(0), MARKETS[:1], {}).commands == [
        ("m-Grid", GridFees(fee_percent=3))
    ]
    with pytest.raises(registry.StrategyConfigError, match="per_market"):
        registry.build("grid_fee_percent", {"fee_percent": 3, "per_market": {"Grid": 120}})


# ------------------------------------------------------------------------------ time of use

TOU = str(STRATEGY_DATA / "ToU.csv")


@pytest.mark.parametrize(
    ("slot", "next_slot", "community", "grid"),
    [
        # The fee is the one listed at the NEXT slot's start time (ToU.csv line "12:15:00;1,4;5,6").
        ("2024-06-01T12:00", "2024-06-01T12:15", 1.4, 5.6),
        ("2024-06-01T00:00", "2024-06-01T00:15", 0.42, 1.68),
        ("2024-06-01T00:15", "2024-06-01T00:30", 0.46, 1.84),
        ("2024-06-01T13:00", "2024-06-01T13:15", 1.64, 6.56),
        ("2024-06-01T23:30", "2024-06-01T23:45", 0.46, 1.84),
        ("2024-06-01T23:45", "2024-06-02T00:00", 0.42, 1.68),
    ],
)
def test_tou_against_the_shipped_file(slot, next_slot, community, grid):
    strategy = registry.build("grid_fee_tou", {"path": TOU})
    result = strategy.evaluate(ctx(0, slot=slot, next_slot=next_slot), MARKETS, {})
    # "House 1" has no column: no command for it.
    assert result.commands == [
        ("m-Grid", GridFees(fee_const=grid)),
        ("m-Community", GridFees(fee_const=community)),
    ]


def test_tou_table_covers_the_day():
    strategy = registry.build("grid_fee_tou", {"path": TOU})
    assert strategy.table.markets == ["Community", "Grid"]
    assert len(strategy.table.fees["Grid"]) == 96


# ------------------------------------------------------------------------------------ Aziiz

AZIIZ = str(STRATEGY_DATA / "aziiz.json")


def stats(imported: float, exported: float) -> dict:
    """A dso_market_stats answer as the exchange sends it (07_batch_response_dso_market_stats)."""
    return {
        "min_trade_rate": None,
        "market_fee_revenue": 0,
        "area_throughput": {"import": imported, "export": exported},
    }


class Platform:
    """What the pipeline does with market state: store results, drop answers into the state."""

    def __init__(self) -> None:
        self.state: dict[str, dict] = {}

    def apply(self, result: MarketResult) -> list:
        self.state.update(result.state)
        # The state must survive msgpack (it lives in Redis between ticks).
        self.state = msgpack.unpackb(msgpack.packb(self.state))
        return result.commands

    def answer(self, uuid: str, answer: dict) -> None:
        self.state.setdefault(uuid, {})[DSO_MARKET_STATS_KEY] = answer


# |import - export| per slot and the expected fee for Grid from the shipped aziiz.json
# (thresholds 10, 15, 20, 25, 30, 50 -> 0.9, 2.1, 3, 3.9, 6, 30; above 50 -> 2000).
AZIIZ_SLOTS = [
    ((12, 4), 0.9),  # |8| -> history [8], mean 8
    ((0, 22), 2.1),  # [8, 22] mean 15: the threshold 15 itself (the SDK's abs(mean(+8, -22)) = 7)
    ((30, 0), 3.0),  # [8, 22, 30] mean 20
    ((50, 10), 3.9),  # [8, 22, 30, 40] mean 25
    ((60, 0), 30.0),  # [22, 30, 40, 60] mean 38: the first slot drops out of the 4-slot window
    ((100, 0), 2000.0),  # [30, 40, 60, 100] mean 57.5: above the last threshold
]


def test_aziiz_moving_average_over_four_slots_with_answers_at_ticks():
    strategy = registry.build("grid_fee_aziiz", {"path": AZIIZ, "markets": ["Grid"]})
    grid = [market("Grid")]
    platform = Platform()
    # First market event: ask for stats, no fee yet.
    assert platform.apply(strategy.evaluate(ctx(0), grid, platform.state)) == [
        ("m-Grid", DsoMarketStats())
    ]
    previous_fee = None
    for (imported, exported), fee in AZIIZ_SLOTS:
        platform.answer("m-Grid", stats(imported, exported))
        # The answer is used at the next tick: the fee for the next slot is set there.
        assert platform.apply(strategy.evaluate(ctx(1), grid, platform.state)) == [
            ("m-Grid", GridFees(fee_const=fee))
        ]
        assert DSO_MARKET_STATS_KEY not in platform.state["m-Grid"]
        # Later ticks do nothing; the next market event asks again and repeats the fee.
        assert platform.apply(strategy.evaluate(ctx(2), grid, platform.state)) == []
        assert platform.apply(strategy.evaluate(ctx(0), grid, platform.state)) == [
            ("m-Grid", DsoMarketStats()),
            ("m-Grid", GridFees(fee_const=fee)),
        ]
        previous_fee = fee
    assert previous_fee == 2000.0
    assert platform.state["m-Grid"][HISTORY_KEY] == [30.0, 40.0, 60.0, 100.0]


def test_aziiz_without_tick_calls_uses_the_answer_at_the_next_market_event():
    strategy = registry.build("grid_fee_aziiz", {"path": AZIIZ})
    markets = [market("Grid"), market("Community"), market("Unknown")]
    platform = Platform()
    first = platform.apply(strategy.evaluate(ctx(0), markets, platform.state))
    assert first == [("m-Grid", DsoMarketStats()), ("m-Community", DsoMarketStats())]
    platform.answer("m-Grid", stats(12, 4))
    platform.answer("m-Community", stats(0, 11))  # 11 -> the 15 threshold -> 2.1
    assert platform.apply(strategy.evaluate(ctx(0), markets, platform.state)) == [
        ("m-Grid", DsoMarketStats()),
        ("m-Grid", GridFees(fee_const=0.9)),
        ("m-Community", DsoMarketStats()),
        ("m-Community", GridFees(fee_const=2.1)),
    ]
    assert platform.state["m-Community"] == {HISTORY_KEY: [11.0]}


def test_aziiz_ignores_an_answer_without_throughput():
    strategy = registry.build("grid_fee_aziiz", {"path": AZIIZ})
    platform = Platform()
    platform.answer("m-Grid", {"area_throughput": None})
    assert platform.apply(strategy.evaluate(ctx(1), [market("Grid")], platform.state)) == []
    assert platform.state["m-Grid"] == {HISTORY_KEY: []}
