"""Registry: built-ins by name, user strategies by entry point and by dotted path, clear errors."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from gridfleet.strategies import registry
from gridfleet.strategies.base import PerAssetStrategy, StrategyConfig, StrategyError
from gridfleet.strategies.builtin import BUILTINS, LinearRamp
from gridfleet.strategies.commands import Bid
from tests.strategies.helpers import LOAD, asset, batch, ctx

USER_PACKAGE = '''
from pydantic import Field

from gridfleet.strategies.base import PerAssetStrategy, StrategyConfig
from gridfleet.strategies.commands import Bid


class HalfConfig(StrategyConfig):
    rate: float = Field(ge=0)


class HalfBid(PerAssetStrategy):
    """Bids half of each load's requirement and counts its calls in the state."""

    Config = HalfConfig

    def decide(self, ctx, asset, state):
        calls = state.get("calls", 0) + 1
        commands = []
        if asset.energy_requirement_kwh > 0.001:
            commands.append(Bid(energy_kwh=asset.energy_requirement_kwh / 2, rate=self.config.rate))
        return commands, {"calls": calls}
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A separate package 'gf_user_strategies' with an entry point, as pip would install it."""
    (tmp_path / "gf_user_strategies").mkdir()
    (tmp_path / "gf_user_strategies" / "__init__.py").write_text(textwrap.dedent(USER_PACKAGE))
    dist = tmp_path / "gf_user_strategies-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gf-user-strategies\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[gridfleet.strategies]\nhalf_bid = gf_user_strategies:HalfBid\n"
        "broken = gf_user_strategies:DoesNotExist\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield "gf_user_strategies"
    sys.modules.pop("gf_user_strategies", None)


def test_builtins_are_registered_by_name():
    assert set(BUILTINS) <= set(registry.names())
    for name in ("fixed_rate", "linear_ramp", "requirements", "forecast", "settlement"):
        assert name in BUILTINS
    for name in ("grid_fee_constant", "grid_fee_percent", "grid_fee_tou", "grid_fee_aziiz"):
        assert name in BUILTINS
    assert isinstance(registry.build("linear_ramp"), LinearRamp)


def test_entry_point_strategy_is_found_and_run_by_name(user_package):
    reg = registry.default_registry()
    strategy = reg.build("half_bid", {"rate": 7})
    b = batch([asset("load", LOAD, requirement=0.5)])
    result = strategy.evaluate(ctx(0), b, {"uuid-load": {"calls": 2}})
    assert result.commands == [(0, Bid(energy_kwh=0.25, rate=7))]
    assert result.state == {"uuid-load": {"calls": 3}}
    assert "half_bid" in reg.names()


def test_entry_point_config_errors_name_strategy_and_field(user_package):
    reg = registry.default_registry()
    with pytest.raises(registry.StrategyConfigError) as info:
        reg.build("half_bid", {"rate": -1})
    assert str(info.value).startswith("strategy 'half_bid': field 'rate':")


def test_a_broken_entry_point_is_reported_when_needed(user_package):
    reg = registry.Registry({})
    assert reg.get("half_bid").__name__ == "HalfBid"  # the broken one does not get in the way
    with pytest.raises(StrategyError, match=r"entry point 'broken'.*DoesNotExist"):
        reg.get("broken")


@pytest.mark.parametrize("sep", [":", "."])
def test_dotted_path_loading(user_package, sep):
    cls = registry.get(f"gf_user_strategies{sep}HalfBid")
    assert issubclass(cls, PerAssetStrategy)
    assert registry.build(f"gridfleet.strategies.builtin{sep}LinearRamp", {}).name == "linear_ramp"


def test_unknown_names_list_the_known_ones():
    with pytest.raises(registry.UnknownStrategyError) as info:
        registry.build("linear_rampp", {})
    assert "linear_ramp" in str(info.value) and "grid_fee_aziiz" in str(info.value)
    with pytest.raises(registry.UnknownStrategyError, match="cannot import"):
        registry.get("no_such_pkg.mod:Thing")
    with pytest.raises(registry.UnknownStrategyError, match="no attribute"):
        registry.get("gridfleet.strategies.builtin:Nope")


def test_only_strategy_classes_are_accepted():
    with pytest.raises(StrategyError, match="not an AssetStrategy or MarketStrategy"):
        registry.get("gridfleet.strategies.base:StrategyConfig")
    reg = registry.Registry({})
    with pytest.raises(StrategyError):
        reg.register("x", StrategyConfig)  # type: ignore[arg-type]
    reg.register("ramp", LinearRamp)
    with pytest.raises(StrategyError, match="taken"):
        reg.register("ramp", registry.get("fixed_rate"))


def test_config_errors_name_strategy_and_field():
    with pytest.raises(registry.StrategyConfigError) as info:
        registry.build("fixed_rate", {"rate": -1, "typo": 2})
    message = str(info.value)
    assert "strategy 'fixed_rate'" in message
    assert "field 'rate'" in message and "field 'typo'" in message
    with pytest.raises(registry.StrategyConfigError, match=r"field 'strategies\.0\.name'"):
        registry.build("composite", {"strategies": [{"params": {}}]})
