"""Evaluate one shard: run its strategies, validate every command, serialize per aggregator.

This is pure (no Redis, no clock): the Celery task, the coordinator's hedge and the
single-process baseline all call :func:`evaluate_shard`, so a shard gives the same commands
wherever it runs. Validation happens here because this is where each command's asset (its kind
and energies this round) is known; nothing that fails it reaches a batch.

The output keeps each aggregator's commands as a ready JSON fragment (the members of the
``batch_commands`` object without braces), so the coordinator merges shards by joining bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gridfleet.exchange.outbound import (
    GSY_E_1_3,
    ExchangeProfile,
    OpenMarkets,
    OutboundRejected,
    Target,
    to_wire,
    validate_command,
    validate_orders,
)
from gridfleet.strategies.base import AssetStrategy, MarketStrategy
from gridfleet.strategies.commands import StrategyResult
from gridfleet.strategies.context import AssetBatch, AssetKind, MarketView, State, TickContext

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Refusal:
    """A command gridfleet refused to send, or an evaluation that failed."""

    aggregator: str
    asset: str
    command: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {
            "aggregator": self.aggregator,
            "asset": self.asset,
            "command": self.command,
            "reason": self.reason,
        }


@dataclass(slots=True)
class ShardOutput:
    fragments: dict[str, bytes] = field(default_factory=dict)  # aggregator uuid -> JSON members
    commands: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # aggregator uuid -> commands
    refusals: list[Refusal] = field(default_factory=list)  # failed validation
    errors: list[Refusal] = field(default_factory=list)  # strategies that raised
    state: dict[str, State] = field(default_factory=dict)  # uuid -> new state (changed only)


def _target(batch: AssetBatch, row: int) -> Target:
    dev = batch.unsettled_deviation_kwh[row] if batch.unsettled_deviation_kwh else None
    return Target(
        uuid=batch.uuid[row],
        name=batch.name[row],
        kind=AssetKind(int(batch.kind[row])),
        energy_requirement_kwh=float(batch.energy_requirement_kwh[row]),
        available_energy_kwh=float(batch.available_energy_kwh[row]),
        energy_to_buy_kwh=float(batch.energy_to_buy_kwh[row]),
        energy_to_sell_kwh=float(batch.energy_to_sell_kwh[row]),
        unsettled_deviation_kwh=dev or {},
    )


def _open_markets(ctx: TickContext, batch: AssetBatch) -> OpenMarkets:
    # The exchange reports a deviation only for slots whose settlement market is open.
    others: set[str] = set()
    for dev in batch.unsettled_deviation_kwh or []:
        if dev:
            others.update(dev)
    return OpenMarkets(ctx.market_slot, frozenset(others))


def _run_guarded(
    strategy: AssetStrategy,
    ctx: TickContext,
    batch: AssetBatch,
    state: Mapping[str, State],
    errors: list[Refusal],
) -> list[tuple[np.ndarray, StrategyResult]]:
    """Evaluate; if the strategy raises, retry per aggregator so only the failing ones are skipped."""
    try:
        return [(np.arange(len(batch)), strategy.evaluate(ctx, batch, state))]
    except Exception as exc:
        aggs = sorted(set(batch.aggregator))
        if len(aggs) == 1:
            log.error(
                "strategy %s failed for aggregator %s at %s#%s: %r",
                strategy.name,
                aggs[0],
                ctx.market_slot,
                ctx.tick_index,
                exc,
            )
            errors.append(Refusal(aggs[0], "*", strategy.name, f"strategy raised {exc!r}"))
            return []
    out = []
    agg_arr = np.asarray(batch.aggregator, dtype=object)
    for agg in aggs:
        rows = np.flatnonzero(agg_arr == agg)
        sub = batch.take(rows)
        try:
            out.append((rows, strategy.evaluate(ctx, sub, state)))
        except Exception as exc:
            log.error(
                "strategy %s failed for aggregator %s at %s#%s: %r",
                strategy.name,
                agg,
                ctx.market_slot,
                ctx.tick_index,
                exc,
            )
            errors.append(Refusal(agg, "*", strategy.name, f"strategy raised {exc!r}"))
    return out


def evaluate_shard(
    ctx: TickContext,
    batch: AssetBatch,
    strategy_index: np.ndarray,
    strategies: Sequence[AssetStrategy],
    state: Mapping[str, State],
    markets: Sequence[MarketView] = (),
    market_strategy_index: Sequence[int] = (),
    market_strategies: Sequence[MarketStrategy] = (),
    profile: ExchangeProfile = GSY_E_1_3,
) -> ShardOutput:
    """Run a shard's strategies and return validated, serialized commands per aggregator."""
    out = ShardOutput()
    per_asset: dict[str, list[dict[str, Any]]] = {}
    owner: dict[str, str] = {}
    markets_open = _open_markets(ctx, batch)

    for k in np.unique(strategy_index) if len(batch) else []:
        strategy = strategies[int(k)]
        rows_k = np.flatnonzero(strategy_index == k)
        group = batch if len(rows_k) == len(batch) else batch.take(rows_k)
        for local_rows, result in _run_guarded(strategy, ctx, group, state, out.errors):
            rows = rows_k[local_rows]
            if not _rows_in_range(result, len(rows)):
                # numpy would raise on a row past the end and silently wrap a negative one onto
                # another asset: a strategy that names rows it was not given is refused whole.
                aggs = sorted({batch.aggregator[int(r)] for r in rows})
                log.error(
                    "strategy %s named rows outside its batch of %d at %s#%s; its commands for"
                    " %d aggregators are refused",
                    strategy.name,
                    len(rows),
                    ctx.market_slot,
                    ctx.tick_index,
                    len(aggs),
                )
                out.errors.extend(
                    Refusal(a, "*", strategy.name, "rows outside the batch") for a in aggs
                )
                continue
            _collect_orders(result, rows, batch, per_asset, owner, out)
            for local, command in result.commands:
                row = int(rows[local])
                uuid = batch.uuid[row]
                try:
                    wire = validate_command(
                        to_wire(command), _target(batch, row), markets_open, profile
                    )
                except (OutboundRejected, TypeError) as exc:
                    reason = exc.reason if isinstance(exc, OutboundRejected) else str(exc)
                    out.refusals.append(
                        Refusal(batch.aggregator[row], uuid, type(command).__name__, reason)
                    )
                    continue
                per_asset.setdefault(uuid, []).append(wire)
                owner[uuid] = batch.aggregator[row]
            out.state.update(result.state)

    for k in sorted(set(market_strategy_index)):
        strategy_m = market_strategies[k]
        group_m = [m for m, i in zip(markets, market_strategy_index, strict=True) if i == k]
        by_uuid = {m.uuid: m for m in group_m}
        try:
            mres = strategy_m.evaluate(ctx, group_m, state)
        except Exception as exc:
            log.error(
                "market strategy %s failed at %s#%s: %r",
                strategy_m.name,
                ctx.market_slot,
                ctx.tick_index,
                exc,
            )
            out.errors.extend(
                Refusal(m.aggregator, m.uuid, strategy_m.name, f"strategy raised {exc!r}")
                for m in group_m
            )
            continue
        for market_uuid, command in mres.commands:
            market = by_uuid.get(market_uuid)
            if market is None:
                out.refusals.append(
                    Refusal(
                        "?", market_uuid, type(command).__name__, "not a market of this strategy"
                    )
                )
                continue
            try:
                wire = validate_command(
                    to_wire(command), Target(market.uuid, market.name, None), markets_open, profile
                )
            except OutboundRejected as exc:
                out.refusals.append(
                    Refusal(market.aggregator, market_uuid, type(command).__name__, exc.reason)
                )
                continue
            per_asset.setdefault(market_uuid, []).append(wire)
            owner[market_uuid] = market.aggregator
        out.state.update(mres.state)

    by_agg: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for uuid, cmds in per_asset.items():
        agg = owner[uuid]
        by_agg.setdefault(agg, {})[uuid] = cmds
        out.counts[agg] = out.counts.get(agg, 0) + len(cmds)
        out.commands += len(cmds)
    out.fragments = {agg: orjson.dumps(cmds)[1:-1] for agg, cmds in by_agg.items()}
    for refusal in out.refusals:
        log.warning(
            "refused %s for %s (aggregator %s): %s",
            refusal.command,
            refusal.asset,
            refusal.aggregator,
            refusal.reason,
        )
    return out


def _rows_in_range(result: StrategyResult, n: int) -> bool:
    """Every order and command names a row of the batch the strategy was given."""
    rows = np.asarray(result.orders.row) if len(result.orders) else np.zeros(0, dtype=np.int64)
    locals_ = [local for local, _ in result.commands]
    return bool(((rows >= 0) & (rows < n)).all()) and all(0 <= int(x) < n for x in locals_)


def _collect_orders(
    result: StrategyResult,
    rows: np.ndarray,
    batch: AssetBatch,
    per_asset: dict[str, list[dict[str, Any]]],
    owner: dict[str, str],
    out: ShardOutput,
) -> None:
    orders = result.orders
    if not len(orders):
        return
    r = rows[orders.row]
    check = validate_orders(
        batch.kind[r],
        orders.is_bid,
        orders.energy_kwh,
        orders.rate,
        batch.energy_requirement_kwh[r],
        batch.available_energy_kwh[r],
        batch.energy_to_buy_kwh[r],
        batch.energy_to_sell_kwh[r],
    )
    for i, side, reason in check.refusals:
        row = int(r[i])
        out.refusals.append(Refusal(batch.aggregator[row], batch.uuid[row], side, reason))
    ok = np.flatnonzero(check.ok)
    energy = orders.energy_kwh[ok].tolist()
    price = check.price[ok].tolist()  # the prices validated, not a second computation of them
    side = np.where(orders.is_bid[ok], "bid", "offer").tolist()
    uuids = batch.uuid
    aggs = batch.aggregator
    for j, row in enumerate(r[ok].tolist()):
        uuid = uuids[row]
        per_asset.setdefault(uuid, []).append(
            {"type": side[j], "energy": energy[j], "price": price[j], "replace_existing": True}
        )
        owner[uuid] = aggs[row]


def merge_fragments(fragments: Sequence[bytes]) -> bytes:
    """One ``batch_commands`` JSON object from shard fragments of the same aggregator."""
    return b"{" + b",".join(f for f in fragments if f) + b"}"
