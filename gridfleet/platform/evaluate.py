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
from itertools import groupby
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
    *,
    fast_render: bool = True,
) -> ShardOutput:
    """Run a shard's strategies and return validated, serialized commands per aggregator.

    A shard whose strategies only sent orders (the built-in ones) is serialized by
    :func:`_render_orders`; ``fast_render=False`` serializes it as any other (:func:`_serialize`,
    the reference it is tested against).
    """
    out = ShardOutput()
    # What goes out, in the order it was decided: each result's orders, then its commands.
    steps: list[tuple[_Orders | None, list[tuple[str, str, dict[str, Any]]]]] = []
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
            orders = _check_orders(result, rows, batch, out)
            sent: list[tuple[str, str, dict[str, Any]]] = []
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
                sent.append((uuid, batch.aggregator[row], wire))
            steps.append((orders, sent))
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
        sent = []
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
            sent.append((market_uuid, market.aggregator, wire))
        steps.append((None, sent))
        out.state.update(mres.state)

    rendered = (
        _render_orders([o for o, _ in steps if o is not None], batch)
        if fast_render and not any(sent for _, sent in steps)
        else None
    )
    if rendered is not None:
        out.fragments, out.counts = rendered
        out.commands = sum(out.counts.values())
    else:
        _serialize(steps, batch, out)
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


@dataclass(slots=True)
class _Orders:
    """The orders of one strategy result that passed validation (rows of the shard's batch)."""

    row: np.ndarray
    is_bid: np.ndarray
    energy: np.ndarray
    price: np.ndarray  # the prices validated, not a second computation of them


def _check_orders(
    result: StrategyResult, rows: np.ndarray, batch: AssetBatch, out: ShardOutput
) -> _Orders | None:
    """Validate a result's orders; refusals go to ``out``, the rest is returned."""
    orders = result.orders
    if not len(orders):
        return None
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
    return _Orders(r[ok], np.asarray(orders.is_bid)[ok], orders.energy_kwh[ok], check.price[ok])


def _serialize(
    steps: list[tuple[_Orders | None, list[tuple[str, str, dict[str, Any]]]]],
    batch: AssetBatch,
    out: ShardOutput,
) -> None:
    """Each aggregator's fragment: its assets' (and markets') commands, an asset listed where its
    first command was decided, its commands in that order."""
    per_asset: dict[str, list[dict[str, Any]]] = {}
    owner: dict[str, str] = {}
    uuids, aggs = batch.uuid, batch.aggregator
    for orders, sent in steps:
        if orders is not None:
            energy = orders.energy.tolist()
            price = orders.price.tolist()
            side = np.where(orders.is_bid, "bid", "offer").tolist()
            for j, row in enumerate(orders.row.tolist()):
                uuid = uuids[row]
                per_asset.setdefault(uuid, []).append(
                    {
                        "type": side[j],
                        "energy": energy[j],
                        "price": price[j],
                        "replace_existing": True,
                    }
                )
                owner[uuid] = aggs[row]
        for uuid, agg, wire in sent:
            per_asset.setdefault(uuid, []).append(wire)
            owner[uuid] = agg
    by_agg: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for uuid, cmds in per_asset.items():
        agg = owner[uuid]
        by_agg.setdefault(agg, {})[uuid] = cmds
        out.counts[agg] = out.counts.get(agg, 0) + len(cmds)
        out.commands += len(cmds)
    out.fragments = {agg: orjson.dumps(cmds)[1:-1] for agg, cmds in by_agg.items()}


# An order as _serialize writes it, in pieces: the numbers are rendered by orjson, all at once.
_HEAD = np.array([b'{"type":"offer","energy":', b'{"type":"bid","energy":'], dtype=object)
_PRICE = b',"price":'
_TAIL = np.array([b',"replace_existing":true},', b',"replace_existing":true}]'], dtype=object)
_KEY_OPEN = np.array([b',"', b'"'], dtype=object)  # an aggregator's later asset / its first
_KEY_CLOSE = b'":['
# The characters JSON writes as they are (printable ASCII but '"' and '\\'): a uuid of these only
# is written between quotes, byte for byte.
_PLAIN = bytes(c for c in range(0x20, 0x80) if c not in b'"\\')


def _objects(items: list[bytes]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _numbers(values: np.ndarray) -> np.ndarray:
    """Each float as orjson writes it (one call for the lot; a float's text has no comma)."""
    return _objects(orjson.dumps(values.tolist())[1:-1].split(b","))


def _render_orders(
    groups: list[_Orders], batch: AssetBatch
) -> tuple[dict[str, bytes], dict[str, int]] | None:
    """:func:`_serialize`'s fragments and counts for orders only, built by numpy: every piece of
    every fragment is put in place in one object array, then each fragment is one join.

    None where its shortcuts do not hold (a uuid twice, a uuid JSON would escape, numbers that
    are not float64): the caller serializes those with :func:`_serialize`.
    """
    if not groups:
        return {}, {}
    row = np.concatenate([g.row for g in groups])
    is_bid = np.concatenate([g.is_bid for g in groups])
    energy = np.concatenate([g.energy for g in groups])
    price = np.concatenate([g.price for g in groups])
    m = len(row)
    if m == 0:
        return {}, {}
    if is_bid.dtype != np.bool_ or energy.dtype != np.float64 or price.dtype != np.float64:
        return None
    # Assets in the order of their first order (as per_asset lists them).
    first_rows, first_at = np.unique(row, return_index=True)
    assets = first_rows[np.argsort(first_at)]
    uuids = [batch.uuid[r] for r in assets.tolist()]
    text = "\x00".join(uuids)
    k = len(uuids)
    if not text.isascii() or len(set(uuids)) != k:
        return None
    joined = text.encode()
    if joined.translate(None, _PLAIN) != b"\x00" * (k - 1):  # only the joints are left
        return None
    # Aggregators in the order of their first asset; the assets of each together, in order.
    names: dict[str, int] = {}
    run_code: list[int] = []
    run_len: list[int] = []
    for name, run in groupby(batch.aggregator):
        run_code.append(names.setdefault(name, len(names)))
        run_len.append(len(list(run)))
    code = np.repeat(np.asarray(run_code, dtype=np.int64), run_len)[assets]
    codes, code_first = np.unique(code, return_index=True)
    agg_codes = codes[np.argsort(code_first)]
    rank = np.empty(len(names), dtype=np.int64)
    rank[agg_codes] = np.arange(len(agg_codes))
    by_agg = np.argsort(rank[code], kind="stable")
    assets = assets[by_agg]
    asset_agg = rank[code][by_agg]
    at = np.empty(len(batch), dtype=np.int64)
    at[assets] = np.arange(k)
    order_asset = at[row]
    o = np.argsort(order_asset, kind="stable")  # by asset, each asset's orders as decided
    order_asset = order_asset[o]
    per_asset = np.bincount(order_asset, minlength=k)
    before = np.zeros(k, dtype=np.int64)
    np.cumsum(per_asset[:-1], out=before[1:])
    # Asset i is 3 pieces (key), then 5 per order: head, energy, ",price:", price, tail.
    key_at = 3 * np.arange(k) + 5 * before
    order_at = 3 * (order_asset + 1) + 5 * np.arange(m)
    first_of_agg = np.ones(k, dtype=bool)
    first_of_agg[1:] = asset_agg[1:] != asset_agg[:-1]
    last_of_asset = np.ones(m, dtype=bool)
    last_of_asset[:-1] = order_asset[1:] != order_asset[:-1]
    pieces = np.empty(3 * k + 5 * m, dtype=object)
    pieces[key_at] = _KEY_OPEN[first_of_agg.view(np.int8)]
    pieces[key_at + 1] = _objects(joined.split(b"\x00"))[by_agg]
    pieces[key_at + 2] = _KEY_CLOSE
    pieces[order_at] = _HEAD[is_bid[o].view(np.int8)]
    pieces[order_at + 1] = _numbers(energy[o])
    pieces[order_at + 2] = _PRICE
    pieces[order_at + 3] = _numbers(price[o])
    pieces[order_at + 4] = _TAIL[last_of_asset.view(np.int8)]
    starts = np.flatnonzero(first_of_agg)
    bounds = [*key_at[starts].tolist(), len(pieces)]
    orders_of = np.add.reduceat(per_asset, starts).tolist()
    listed = pieces.tolist()
    agg_names = list(names)
    fragments: dict[str, bytes] = {}
    counts: dict[str, int] = {}
    for i, c in enumerate(agg_codes.tolist()):
        name = agg_names[c]
        fragments[name] = b"".join(listed[bounds[i] : bounds[i + 1]])
        counts[name] = orders_of[i]
    return fragments, counts


def merge_fragments(fragments: Sequence[bytes]) -> bytes:
    """One ``batch_commands`` JSON object from shard fragments of the same aggregator."""
    return b"{" + b",".join(f for f in fragments if f) + b"}"
