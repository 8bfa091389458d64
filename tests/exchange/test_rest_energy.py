"""Forecasts and measurements taken out of a batch for the per-asset endpoints (rest.md 3.7)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gridfleet.exchange.rest_energy import EnergyPost, split_energy

SLOT = "2024-06-01T00:15"
BID = {"type": "bid", "energy": 0.1, "price": 3.0, "replace_existing": True}
FORECAST = {"type": "set_energy_forecast", "energy_forecast": {SLOT: 1.5}}
MEASUREMENT = {"type": "set_energy_measurement", "energy_measurement": {SLOT: 1.2}}


def batch(commands: dict[str, list[dict[str, Any]]]) -> bytes:
    return orjson.dumps(commands)


def test_in_batch_mode_the_batch_is_left_alone() -> None:
    raw = batch({"a": [BID, FORECAST]})
    assert split_energy(raw, "batch") == (raw, [])


def test_endpoints_take_forecasts_and_measurements_out_and_keep_the_rest() -> None:
    kept, posts = split_energy(batch({"a": [BID, FORECAST], "b": [MEASUREMENT]}), "endpoints")
    assert orjson.loads(kept) == {"a": [BID]}  # b had nothing else: left out
    assert posts == [
        EnergyPost("a", "set-energy-forecast", "energy_forecast", {SLOT: 1.5}),
        EnergyPost("b", "set-energy-measurement", "energy_measurement", {SLOT: 1.2}),
    ]
    # exactly the two keys gsy-e accepts (rest.md 3.7)
    assert posts[0].body("t-1") == {"energy_forecast": {SLOT: 1.5}, "transaction_id": "t-1"}


def test_live_mode_sends_measurements_as_live_generation() -> None:
    _, posts = split_energy(batch({"pv": [FORECAST, MEASUREMENT]}), "live")
    assert [(p.endpoint, p.key) for p in posts] == [
        ("set-energy-forecast", "energy_forecast"),
        ("set-live-generation", "live_data"),
    ]


def test_a_batch_of_only_energy_data_is_left_empty() -> None:
    kept, posts = split_energy(batch({"a": [FORECAST]}), "endpoints")
    assert kept == b"{}" and len(posts) == 1


commands = st.sampled_from([BID, FORECAST, MEASUREMENT, {"type": "delete_offer"}])


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.lists(commands, max_size=4)))
def test_nothing_is_lost_or_doubled(batch_commands: dict[str, list[dict[str, Any]]]) -> None:
    kept_raw, posts = split_energy(batch(batch_commands), "endpoints")
    kept = orjson.loads(kept_raw)
    for asset, cmds in batch_commands.items():
        energy = [c for c in cmds if c["type"].startswith("set_energy_")]
        assert kept.get(asset, []) == [c for c in cmds if c not in energy]
        assert len([p for p in posts if p.asset_uuid == asset]) == len(energy)
    if posts:  # when something was taken out, no asset is left with an empty list
        assert all(kept.values())
