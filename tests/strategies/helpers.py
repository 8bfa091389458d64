"""Small builders for strategy tests: batches, contexts, markets, and the shipped data files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gridfleet.strategies.commands import Bid, Offer, StrategyResult
from gridfleet.strategies.context import AssetBatch, AssetKind, MarketView, TickContext

# The SDK templates' data files, vendored (see tests/fixtures/README.md).
STRATEGY_DATA = Path(__file__).resolve().parents[1] / "fixtures" / "strategy-data"

LOAD, PV, STORAGE, METER = AssetKind.LOAD, AssetKind.PV, AssetKind.STORAGE, AssetKind.SMART_METER


def asset(
    name: str,
    kind: AssetKind,
    *,
    requirement: float = 0.0,
    available: float = 0.0,
    to_buy: float = 0.0,
    to_sell: float = 0.0,
    fee: float = 0.0,
    deviations: dict[str, float] | None = None,
    aggregator: str = "agg-1",
    market: str = "House 1",
) -> dict[str, Any]:
    return {
        "uuid": f"uuid-{name}",
        "name": name,
        "aggregator": aggregator,
        "parent_market": market,
        "kind": int(kind),
        "energy_requirement_kwh": requirement,
        "available_energy_kwh": available,
        "energy_to_buy_kwh": to_buy,
        "energy_to_sell_kwh": to_sell,
        "used_storage_kwh": 0.0,
        "free_storage_kwh": 0.0,
        "grid_fee": fee,
        "unsettled_deviation_kwh": deviations,
    }


def batch(rows: list[dict[str, Any]]) -> AssetBatch:
    """An AssetBatch from :func:`asset` rows."""
    if not rows:
        return AssetBatch.empty()

    def col(key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=np.float64)

    return AssetBatch(
        uuid=[r["uuid"] for r in rows],
        name=[r["name"] for r in rows],
        aggregator=[r["aggregator"] for r in rows],
        parent_market=[r["parent_market"] for r in rows],
        kind=np.array([r["kind"] for r in rows], dtype=np.int8),
        energy_requirement_kwh=col("energy_requirement_kwh"),
        available_energy_kwh=col("available_energy_kwh"),
        energy_to_buy_kwh=col("energy_to_buy_kwh"),
        energy_to_sell_kwh=col("energy_to_sell_kwh"),
        used_storage_kwh=col("used_storage_kwh"),
        free_storage_kwh=col("free_storage_kwh"),
        grid_fee=col("grid_fee"),
        unsettled_deviation_kwh=[r["unsettled_deviation_kwh"] for r in rows],
    )


def ctx(
    tick: int = 0,
    *,
    fit: float = 10.0,
    mmr: float = 30.0,
    market_event: bool | None = None,
    slot: str = "2024-06-01T12:00",
    next_slot: str = "2024-06-01T12:15",
    num_ticks: int = 10,
    names: dict[str, str] | None = None,
) -> TickContext:
    return TickContext(
        market_slot=slot,
        next_market_slot=next_slot,
        tick_index=tick,
        num_ticks=num_ticks,
        is_market_event=(tick == 0) if market_event is None else market_event,
        feed_in_tariff_rate=fit,
        market_maker_rate=mmr,
        asset_uuids_by_name=names,
    )


def market(name: str, uuid: str | None = None) -> MarketView:
    return MarketView(
        uuid=uuid or f"m-{name}",
        name=name,
        aggregator="dso",
        last_market_fee=None,
        current_market_fee=None,
        last_market_stats={},
    )


def orders_by_uuid(b: AssetBatch, result: StrategyResult) -> dict[tuple[str, str], tuple]:
    """(uuid, "bid"/"offer") -> (energy, rate) for array orders and spot Bid/Offer commands."""
    out: dict[tuple[str, str], tuple] = {}
    o = result.orders
    for row, is_bid, energy, rate in zip(
        o.row.tolist(), o.is_bid.tolist(), o.energy_kwh.tolist(), o.rate.tolist(), strict=True
    ):
        out[(b.uuid[row], "bid" if is_bid else "offer")] = (energy, rate)
    for row, command in result.commands:
        if isinstance(command, Bid | Offer) and command.time_slot is None:
            side = "bid" if isinstance(command, Bid) else "offer"
            out[(b.uuid[row], side)] = (command.energy_kwh, command.rate)
    return out
