"""gridfleet.testing: build inputs from dicts, run a strategy as the pipeline does, catch bad commands."""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping

import numpy as np
import orjson
import pytest

from gridfleet.exchange.messages import MarketEvent, decode_event
from gridfleet.exchange.outbound import ExchangeProfile
from gridfleet.platform.evaluate import evaluate_shard, merge_fragments
from gridfleet.platform.rounds import build_round
from gridfleet.strategies import registry
from gridfleet.strategies.base import (
    AssetStrategy,
    MarketResult,
    MarketStrategy,
    PerAssetStrategy,
)
from gridfleet.strategies.commands import (
    Bid,
    Command,
    GridFees,
    Offer,
    OrderArrays,
    StrategyResult,
)
from gridfleet.strategies.context import (
    AssetBatch,
    AssetKind,
    AssetView,
    MarketView,
    State,
    TickContext,
)
from gridfleet.strategies.registry import StrategyConfigError, UnknownStrategyError
from gridfleet.testing import (
    CommandRefused,
    asset_batch,
    market_views,
    run_strategy,
    tick_context,
)
from tests.conftest import REPO_ROOT, load_example

# ------------------------------------------------------------------------------------ builders


def test_tick_context_defaults_to_the_market_event_and_works_out_the_next_slot() -> None:
    ctx = tick_context()
    assert ctx.is_market_event and ctx.tick_index == 0
    assert (ctx.market_slot, ctx.next_market_slot) == ("2024-06-01T12:00", "2024-06-01T12:15")
    tick = tick_context(market_slot="2024-06-01T23:45", tick_index=4, feed_in_tariff_rate=7)
    assert not tick.is_market_event
    assert tick.next_market_slot == "2024-06-02T00:00"
    assert tick.feed_in_tariff_rate == 7


def test_tick_context_refuses_a_tick_outside_the_slot() -> None:
    with pytest.raises(ValueError, match=r"tick_index 10 outside 0\.\.9"):
        tick_context(tick_index=10)


def test_asset_batch_names_counts_and_defaults_per_kind() -> None:
    batch = asset_batch(
        [
            {"kind": "load"},
            {"kind": AssetKind.PV, "available_energy_kwh": 0.3, "grid_fee": 2},
            {"kind": "load", "name": "Fridge", "aggregator": "agg-2"},
            {"kind": "storage", "energy_to_sell_kwh": 0.0},
            {"kind": "smart_meter"},
        ]
    )
    assert batch.name == ["load-1", "pv-1", "Fridge", "storage-1", "smart_meter-1"]
    assert batch.uuid == [f"uuid-{n}" for n in batch.name]
    assert batch.aggregator == ["aggregator-1", "aggregator-1", "agg-2"] + ["aggregator-1"] * 2
    assert batch.kind.tolist() == [0, 1, 0, 2, 3]
    assert batch.energy_requirement_kwh.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert batch.available_energy_kwh.tolist() == [0.0, 0.3, 0.0, 0.0, 1.0]
    assert batch.energy_to_buy_kwh.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert batch.energy_to_sell_kwh.tolist() == [0.0] * 5
    assert batch.grid_fee.tolist() == [0.0, 2.0, 0.0, 0.0, 0.0]
    assert batch.unsettled_deviation_kwh == []  # as the pipeline leaves it when nobody has one
    assert batch.view(1).parent_market == "House 1"


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([{"kind": "load", "requirement": 1}], r"asset #0: unknown key\(s\) \['requirement'\]"),
        ([{"name": "x"}], r"asset #0 \('x'\): 'kind' is required"),
        ([{"kind": "battery"}], r"kind must be one of load, pv, storage, smart_meter"),
        (
            [{"kind": "pv", "energy_requirement_kwh": 1}],
            r"asset 'pv-1': a pv has no \['energy_requirement_kwh'\]",
        ),
        (
            [{"kind": "load", "energy_requirement_kwh": "1"}],
            r"asset 'load-1': energy_requirement_kwh must be a finite number, got '1'",
        ),
        ([{"kind": "load", "grid_fee": True}], r"grid_fee must be a finite number"),
        ([{"kind": "load"}, {"kind": "pv", "name": "load-1"}], r"repeated: \['load-1'\]"),
        ({"kind": "load"}, r"asset #0: expected a dict, got 'kind'"),
        (
            [{"kind": "load", "unsettled_deviation_kwh": {"2024-06-01T11:45": None}}],
            r"unsettled_deviation_kwh\['2024-06-01T11:45'\] must be a finite number",
        ),
    ],
)
def test_asset_batch_names_what_is_wrong(specs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        asset_batch(specs)  # type: ignore[arg-type]


def test_market_views_from_dicts() -> None:
    (view,) = market_views([{"name": "Community", "current_market_fee": 3}])
    assert view == MarketView(
        uuid="uuid-Community",
        name="Community",
        aggregator="aggregator-1",
        last_market_fee=None,
        current_market_fee=3.0,
        last_market_stats={},
    )
    with pytest.raises(ValueError, match=r"market #0: unknown key\(s\) \['fee'\]"):
        market_views([{"name": "Grid", "fee": 1}])


# ------------------------------------------------------------------------------------ running


def test_a_registered_strategy_by_name_gives_the_wire_commands() -> None:
    run = run_strategy(
        "fixed_rate",
        [{"kind": "load", "energy_requirement_kwh": 0.5}, {"kind": "pv"}],
        params={"rate": 12},
    )
    assert run.batch_commands == {
        "aggregator-1": {
            "uuid-load-1": [{"type": "bid", "energy": 0.5, "price": 6.0, "replace_existing": True}],
            "uuid-pv-1": [
                {"type": "offer", "energy": 1.0, "price": 12.0, "replace_existing": True}
            ],
        }
    }
    assert run.for_asset("load-1") == run.for_asset("uuid-load-1") == run.commands["uuid-load-1"]
    assert run.refusals == []


def test_the_commands_are_the_pipelines_own() -> None:
    """Same inputs straight into evaluate_shard give the same bytes on the wire."""
    batch = asset_batch(
        [
            {"kind": "load", "grid_fee": 4},
            {"kind": "pv", "aggregator": "agg-2"},
            {"kind": "storage"},
        ]
    )
    ctx = tick_context(tick_index=3)
    run = run_strategy("linear_ramp", batch, ctx=ctx)
    direct = evaluate_shard(
        ctx, batch, np.zeros(len(batch), dtype=np.int64), [registry.build("linear_ramp")], {}
    )
    assert run.batch_commands == {
        agg: orjson.loads(merge_fragments([f])) for agg, f in direct.fragments.items()
    }
    assert set(run.batch_commands) == {"aggregator-1", "agg-2"}


def test_on_a_captured_event_it_sends_what_the_sdk_sent() -> None:
    """The SDK's ramp bid for Load 1 L13 at the capture's first market event, from the real tree."""
    event = decode_event(orjson.dumps(load_example("05_event_market")["data"]))
    assert isinstance(event, MarketEvent)
    round_ = build_round([("f7ff39cb-08b0-4414-9e98-2a4a7c5c73aa", event)])
    run = run_strategy("linear_ramp", round_.assets, ctx=round_.ctx)
    sent = load_example("06_batch_command_bid")["data"]["batch_commands"]
    ((uuid, (want,)),) = sent.items()
    (got,) = run.for_asset(uuid)
    assert run.for_asset("Load 1 L13") == [got]
    assert (got["type"], got["energy"]) == (want["type"], want["energy"])
    assert got["price"] == pytest.approx(want["price"])


class Greedy(PerAssetStrategy):
    """Deliberately wrong: bids twice what a load needs, and bids on PVs too."""

    name = "greedy"

    def decide(
        self, ctx: TickContext, asset: AssetView, state: State
    ) -> tuple[list[Command], State | None]:
        if asset.kind is AssetKind.PV:
            return [Bid(0.5, 20.0)], None
        return [Bid(2 * asset.energy_requirement_kwh, 20.0)], None


def test_a_bad_strategy_fails_naming_each_asset_and_reason() -> None:
    assets = [{"kind": "load", "name": "Heat pump"}, {"kind": "pv", "name": "Roof"}]
    with pytest.raises(CommandRefused) as caught:
        run_strategy(Greedy(), assets)
    message = str(caught.value)
    assert "strategy 'greedy' emitted 2 command(s) the exchange would refuse" in message
    assert (
        "asset 'Heat pump' (uuid-Heat pump): Bid: energy 2.0 kWh above the requirement 1.0 kWh"
        in message
    )
    assert "asset 'Roof' (uuid-Roof): Bid: a PV cannot bid on the spot market" in message
    assert [r.asset for r in caught.value.refusals] == ["uuid-Heat pump", "uuid-Roof"]


def test_without_check_the_refusals_are_returned_and_the_rest_is_sent() -> None:
    assets = [
        {"kind": "load", "name": "Heat pump", "energy_requirement_kwh": 0.0},
        {"kind": "load", "name": "Fridge"},
    ]
    run = run_strategy(Greedy(), assets, check=False)
    # 2 x 0 kWh is at the exchange's floor: refused; the fridge's 2 kWh is above its 1 kWh.
    assert [(r.asset, r.reason) for r in run.refusals] == [
        ("uuid-Heat pump", "energy 0.0 kWh is at or below 2e-05 kWh"),
        ("uuid-Fridge", "energy 2.0 kWh above the requirement 1.0 kWh"),
    ]
    assert run.batch_commands == {}
    with pytest.raises(CommandRefused, match="Heat pump"):
        run.assert_valid()


class OffersFromLoads(AssetStrategy):
    """Deliberately wrong, vectorized: every asset offers, loads included."""

    name = "offers_from_loads"

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        n = len(assets)
        orders = OrderArrays(
            np.arange(n), np.zeros(n, dtype=bool), np.full(n, 0.5), np.full(n, 15.0)
        )
        return StrategyResult(orders=orders)


def test_order_arrays_go_through_the_vectorized_validator() -> None:
    with pytest.raises(CommandRefused) as caught:
        run_strategy(OffersFromLoads(), [{"kind": "pv"}, {"kind": "load", "name": "Oven"}])
    assert "asset 'Oven' (uuid-Oven): offer: a load cannot offer on the spot market" in str(
        caught.value
    )
    run = run_strategy(OffersFromLoads(), [{"kind": "pv"}, {"kind": "load"}], check=False)
    assert run.for_asset("pv-1") == [
        {"type": "offer", "energy": 0.5, "price": 7.5, "replace_existing": True}
    ]
    assert run.for_asset("load-1") == []


class WithRequirements(PerAssetStrategy):
    name = "with_requirements"

    def decide(
        self, ctx: TickContext, asset: AssetView, state: State
    ) -> tuple[list[Command], State | None]:
        return [Bid(0.5, 10.0, requirements=[{"price": 5.0}])], None


def test_a_key_that_would_crash_gsy_e_is_refused_unless_the_exchange_takes_it() -> None:
    with pytest.raises(CommandRefused, match=r"unexpected key\(s\) \['requirements'\]"):
        run_strategy(WithRequirements(), [{"kind": "load"}])
    run = run_strategy(
        WithRequirements(), [{"kind": "load"}], profile=ExchangeProfile(accepts_requirements=True)
    )
    assert run.for_asset("load-1")[0]["requirements"] == [{"price": 5.0}]


class Counter(PerAssetStrategy):
    name = "counter"

    def decide(
        self, ctx: TickContext, asset: AssetView, state: State
    ) -> tuple[list[Command], State | None]:
        return [], {"seen": state.get("seen", 0) + 1}


def test_state_goes_in_and_comes_out() -> None:
    first = run_strategy(Counter(), [{"kind": "load"}])
    assert first.state == {"uuid-load-1": {"seen": 1}}
    second = run_strategy(Counter(), [{"kind": "load"}], state=first.state)
    assert second.state == {"uuid-load-1": {"seen": 2}}


class Broken(PerAssetStrategy):
    name = "broken"

    def decide(
        self, ctx: TickContext, asset: AssetView, state: State
    ) -> tuple[list[Command], State | None]:
        raise ZeroDivisionError("rate over zero ticks")


def test_an_exception_in_the_strategy_reaches_the_test_as_it_is() -> None:
    with pytest.raises(ZeroDivisionError, match="rate over zero ticks") as caught:
        run_strategy(Broken(), [{"kind": "load"}], ctx=tick_context(tick_index=2))
    (note,) = caught.value.__notes__
    assert "strategy 'broken' for aggregator(s) aggregator-1 at 2024-06-01T12:00 tick 2" in note
    # The traceback goes down into the strategy's own code.
    frames = [frame.name for frame in traceback.extract_tb(caught.tb)]
    assert "decide" in frames


class RowsOutside(AssetStrategy):
    name = "rows_outside"

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        return StrategyResult(commands=[(-1, Offer(0.1, 1.0)), (len(assets), Offer(0.1, 1.0))])


def test_rows_outside_the_batch_are_caught_at_the_strategy() -> None:
    with pytest.raises(AssertionError, match=r"rows \[-1, 1\] outside its batch of 1 assets"):
        run_strategy(RowsOutside(), [{"kind": "pv"}])


def test_a_market_strategy_runs_on_markets() -> None:
    run = run_strategy(
        "grid_fee_constant",
        markets=[{"name": "Community"}, {"name": "Grid"}],
        params={"fee_const": 3, "per_market": {"Grid": 1}},
    )
    assert run.for_asset("Community") == [{"type": "grid_fees", "data": {"fee_const": 3.0}}]
    assert run.for_asset("uuid-Grid") == [{"type": "grid_fees", "data": {"fee_const": 1.0}}]


class FeeOnAStranger(MarketStrategy):
    name = "fee_on_a_stranger"

    def on_market(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        return MarketResult(commands=[("not-mine", GridFees(fee_const=1.0))])


def test_a_market_strategy_command_for_a_market_it_does_not_manage_is_refused() -> None:
    with pytest.raises(CommandRefused, match=r"'not-mine': GridFees: not a market of this"):
        run_strategy(FeeOnAStranger(), markets=[{"name": "Community"}])


def test_usage_mistakes_are_named() -> None:
    with pytest.raises(UnknownStrategyError, match="unknown strategy 'no_such'"):
        run_strategy("no_such", [{"kind": "load"}])
    with pytest.raises(StrategyConfigError):
        run_strategy("fixed_rate", [{"kind": "load"}], params={"rate": -1})
    with pytest.raises(TypeError, match="params are for a strategy given by name"):
        run_strategy(Greedy(), [{"kind": "load"}], params={"rate": 1})
    with pytest.raises(ValueError, match="asset strategy: give it assets"):
        run_strategy("fixed_rate")
    with pytest.raises(ValueError, match="market strategy: give it markets"):
        run_strategy("grid_fee_constant", [{"kind": "load"}], params={"fee_const": 1})
    with pytest.raises(KeyError, match=r"no asset or market 'nobody'; known: \['load-1'\]"):
        run_strategy("fixed_rate", [{"kind": "load"}]).for_asset("nobody")


# ------------------------------------------------------------------------------------ the docs


def docs_snippet() -> str:
    """The python block of the "Testing a strategy" section of docs/strategies.md."""
    text = (REPO_ROOT / "docs" / "strategies.md").read_text()
    section = text.split("## Testing a strategy", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the section should have one python example"
    return blocks[0]


def test_the_docs_example_runs_and_its_tests_pass() -> None:
    namespace: dict[str, object] = {"__name__": "docs_example"}
    exec(compile(docs_snippet(), "docs/strategies.md", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_") and callable(fn)]
    assert len(tests) >= 2
    for test in tests:
        test()
