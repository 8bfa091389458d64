"""Every example fleet file loads, resolves against its grid file and builds its strategies."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridfleet.config import load_config
from gridfleet.platform.fleet import plan_fleet

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "ramp-trading.yaml",
        "grid-operator-tou.yaml",
        "mixed-fleet.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_fleet_is_valid(path: Path) -> None:
    plan = plan_fleet(load_config(path))
    assert plan.aggregators
    for agg in plan.aggregators:
        assert agg.assets or agg.markets


def test_ramp_example_splits_the_grid_without_overlap() -> None:
    plan = plan_fleet(load_config(EXAMPLES[0].parent / "ramp-trading.yaml"))
    north, south = plan.aggregators
    assert len(north.assets) == len(south.assets) == 100
    assert not set(north.assets) & set(south.assets)
