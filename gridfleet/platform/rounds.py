"""An *event round*: the events of every aggregator for one (market slot, tick index).

The exchange sends each aggregator its own event within milliseconds of the others. Ingress
coalesces them into one round, and this module turns the round into what strategies read: one
:class:`~gridfleet.strategies.context.TickContext` and one columnar
:class:`~gridfleet.strategies.context.AssetBatch` of every asset of every aggregator, with the
grid fee along each asset's path to the Market Maker computed once per market node of each tree,
not once per asset.

Each aggregator's assets are priced from its own tree only. gsy-e builds every aggregator's tree
of a tick from the same grid, so the trees agree about the markets they share; when they do not
(a corrupted or poisoned event), nothing read from one aggregator's tree reaches another's
assets. A tree whose market fees are not numbers the exchange could have sent (negative, not
finite, above gridfleet's rate bound) is unusable: that aggregator gets no batch this tick, the
others are unaffected.

**Which fee an order pays.** gsy-e fixes a market's fee when the slot's market opens and charges
every order of the slot that fee; a grid operator's ``grid_fees`` command changes the area's fee,
which the tree's ``current_market_fee`` shows at once although it only applies from the next
slot's market. So the fee the exchange applies to an order of slot S is the fee the tree showed
at S's market event. The fleet remembers it (:class:`SlotFees`: per aggregator, each market
holding its assets -> the fee to the Market Maker, read from that aggregator's own tree at the
market event) and prices every asset of the slot's ticks with it. Without a memory (a fleet that
starts mid-slot, a lost market-event round, a market whose assets appeared mid-slot) the tick's
tree is used. Every tree's fees are still checked, remembered or not.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import msgspec
import numpy as np
from msgspec import UnsetType

from gridfleet.exchange.messages import (
    UNSET,
    AssetInfo,
    GridNode,
    GridTree,
    MarketEvent,
    MarketEventHead,
    MarketStats,
    ProtocolError,
    TickEvent,
    TickEventHead,
    decode,
    slot_tick_index,
)
from gridfleet.platform.tree_cut import Reference
from gridfleet.strategies.bounds import MAX_RATE_CT_PER_KWH
from gridfleet.strategies.context import AssetBatch, AssetKind, MarketView, TickContext

log = logging.getLogger(__name__)

MARKET_MAKER_NAMES = frozenset({"Market Maker", "MarketMaker", "market maker"})


class RoundError(ValueError):
    """An event that cannot be used (empty tree, missing rates, malformed structure)."""


@dataclass(frozen=True, slots=True, order=True)
class RoundKey:
    """Identifies an event round: the market slot and the tick index within it."""

    market_slot: str
    tick_index: int

    @property
    def id(self) -> str:
        return f"{self.market_slot}#{self.tick_index}"

    @classmethod
    def of(cls, event: MarketEvent | TickEvent | MarketEventHead | TickEventHead) -> RoundKey:
        return cls(event.market_slot, slot_tick_index(event.slot_completion))


def round_tag(market_slot: str, tick_index: int) -> str:
    """The round a batch answers, as the first part of its transaction id: ``<slot>/<n>%``.

    gsy-e only echoes transaction ids, so this costs nothing there; an exchange that reads it
    (gridfleet's simulator) attributes the batch to the right event even after a lost round,
    instead of guessing from arrival times.
    """
    return f"{market_slot}/{tick_index * 10}%"


def next_slot(market_slot: str, slot_length_s: int) -> str:
    start = dt.datetime.strptime(market_slot, "%Y-%m-%dT%H:%M")
    return (start + dt.timedelta(seconds=slot_length_s)).strftime("%Y-%m-%dT%H:%M")


def kind_of(info: AssetInfo) -> AssetKind:
    """What kind of asset ``asset_info`` describes (gsy-e sends no explicit type)."""
    if info.energy_to_buy is not UNSET or info.energy_to_sell is not UNSET:
        return AssetKind.STORAGE
    has_need = info.energy_requirement_kWh is not UNSET
    has_supply = info.available_energy_kWh is not UNSET
    if has_need and has_supply:
        return AssetKind.SMART_METER
    if has_supply:
        return AssetKind.PV
    return AssetKind.LOAD


SlotFeeMap = Mapping[str, float]
"""One aggregator's remembered fees of a slot: market uuid -> fee to the Market Maker (ct/kWh)
of the assets in that market, as its tree showed them at the slot's market event."""


@dataclass(slots=True)
class SlotFees:
    """The market-event fees of each aggregator's slot, in one process (the one-process loop;
    the pipeline keeps the same thing on the broker, see ``platform.shard``)."""

    by_aggregator: dict[str, tuple[str, dict[str, float]]] = field(default_factory=dict)

    def of(self, market_slot: str) -> dict[str, SlotFeeMap]:
        """Aggregator -> fees remembered for ``market_slot`` (aggregators without: absent)."""
        return {a: fees for a, (slot, fees) in self.by_aggregator.items() if slot == market_slot}

    def remember(self, market_slot: str, fees: Mapping[str, dict[str, float]]) -> None:
        for aggregator, seen in fees.items():
            self.by_aggregator[aggregator] = (market_slot, seen)


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


# The lean model a shard decodes pruned trees into (see :func:`flatten_parts`). It accepts and
# refuses exactly what ``GridTree`` does, with the same messages (tests/platform/test_lean_tree.py),
# but builds no dict for the objects flattening never reads, and leaves an absent number NaN
# (JSON has no NaN) so that a whole column of them becomes an array in one step.
_ABSENT = math.nan


class _AnyObject(msgspec.Struct, gc=False):
    """A JSON object whose members are skipped (validated as JSON): what ``dict[str, Any]``
    accepts, without building the dict."""


class _LeanInfo(msgspec.Struct, kw_only=True, gc=False):
    """:class:`~gridfleet.exchange.messages.AssetInfo`, an absent number being NaN."""

    energy_requirement_kWh: float = _ABSENT
    available_energy_kWh: float = _ABSENT
    energy_to_buy: float = _ABSENT
    energy_to_sell: float = _ABSENT
    used_storage: float = _ABSENT
    free_storage: float = _ABSENT
    energy_active_in_bids: float = _ABSENT
    energy_active_in_offers: float = _ABSENT
    energy_traded: float = _ABSENT
    total_cost: float = _ABSENT
    unsettled_deviation_raw: dict[str, float | None] | UnsetType | None = msgspec.field(
        default=UNSET, name="unsettled_deviation_kWh"
    )


class _LeanNode(msgspec.Struct, kw_only=True, gc=False):
    """:class:`~gridfleet.exchange.messages.GridNode` with :class:`_LeanInfo` and skipped bills."""

    area_name: str
    children: dict[str, _LeanNode] | UnsetType = UNSET
    last_market_bill: _AnyObject | UnsetType | None = UNSET
    last_market_stats: MarketStats | UnsetType | None = UNSET
    last_market_fee: float | UnsetType | None = UNSET
    current_market_fee: float | UnsetType | None = UNSET
    asset_info: _LeanInfo | UnsetType | None = UNSET
    last_slot_asset_info: _AnyObject | UnsetType | None = UNSET
    asset_bill: _AnyObject | UnsetType | None = UNSET

    @property
    def is_market(self) -> bool:
        return self.children is not UNSET


_LeanTree = dict[str, _LeanNode]
AnyNode = GridNode | _LeanNode
AnyTree = Mapping[str, AnyNode]
"""A tree in the wire model or in the lean one: fees and the Market Maker's way read both."""


def market_fee(uid: str, node: AnyNode) -> float:
    """The fee (ct/kWh) of market ``node`` as the strategies price with it; null counts as 0.

    Raises RoundError for a fee the exchange cannot have set (gsy-e refuses negative fees, and
    gridfleet never sends one above its rate bound): the tree carrying it is not used.
    """
    fee = _num(node.current_market_fee)
    if not 0.0 <= fee <= MAX_RATE_CT_PER_KWH:  # also False for NaN
        raise RoundError(
            f"market {node.area_name!r} ({uid}): current_market_fee {fee!r} is not a number in "
            f"[0, {MAX_RATE_CT_PER_KWH:g}] ct/kWh"
        )
    return fee


@dataclass(slots=True)
class _Rows:
    uuid: list[str] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    aggregator: list[str] = field(default_factory=list)
    parent: list[str] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    need: list[float] = field(default_factory=list)
    avail: list[float] = field(default_factory=list)
    buy: list[float] = field(default_factory=list)
    sell: list[float] = field(default_factory=list)
    used: list[float] = field(default_factory=list)
    free: list[float] = field(default_factory=list)
    fee: list[float] = field(default_factory=list)
    deviation: list[dict[str, float] | None] = field(default_factory=list)

    def truncate(self, n: int) -> None:
        """Drop every row from ``n`` on (a tree that turned out unusable half-way)."""
        for column in (
            self.uuid,
            self.name,
            self.aggregator,
            self.parent,
            self.kind,
            self.need,
            self.avail,
            self.buy,
            self.sell,
            self.used,
            self.free,
            self.fee,
            self.deviation,
        ):
            del column[n:]


@dataclass(slots=True)
class RoundInput:
    """Everything the strategies of one round need."""

    key: RoundKey
    ctx: TickContext
    assets: AssetBatch
    markets: list[MarketView]
    aggregators: list[str]  # uuids of the aggregators whose events made this round
    unusable: dict[str, str] = field(default_factory=dict)  # aggregator -> why its tree was not
    # at a market event: aggregator -> the fees to remember for the slot (see SlotFees)
    slot_fees: dict[str, dict[str, float]] = field(default_factory=dict)


def market_maker_down_fees(tree: AnyTree) -> dict[str, float]:
    """For each market on the way from the root to the Market Maker: the fees strictly below it
    on that way. Without a Market Maker in the tree, it is taken to hang off the root."""

    def walk(nodes: AnyTree, path: list[tuple[str, float]]) -> list[tuple[str, float]] | None:
        for uid, node in nodes.items():
            if not node.is_market and node.area_name in MARKET_MAKER_NAMES:
                return path
            if isinstance(node.children, dict):
                found = walk(node.children, [*path, (uid, _num(node.current_market_fee))])
                if found is not None:
                    return found
        return None

    path = walk(tree, [])
    if path is None:
        return {uid: 0.0 for uid in tree}
    return {uid: sum(fee for _, fee in path[i + 1 :]) for i, (uid, _) in enumerate(path)}


@dataclass(frozen=True, slots=True)
class MarketMakerWay:
    """Where the Market Maker hangs, found once per round: the market uuids from a root down to
    its parent (``None``: no Market Maker, it is taken to hang off the root).

    Finding it may walk a whole tree; reading its fees from a tree only walks the way. Every
    tree's fees are read from that tree (:meth:`down_fees`), so trees disagreeing about a fee on
    the way do not affect each other.
    """

    markets: tuple[str, ...] | None

    @classmethod
    def find(cls, tree: AnyTree) -> MarketMakerWay:
        return cls(_way(tree))

    @classmethod
    def in_reference(cls, ref: Reference) -> MarketMakerWay:
        """:meth:`find` from a cut reference's node list (pre-order: the same first Market
        Maker), without walking the tree again."""
        for uid, node in ref.nodes.items():
            if not node.is_market and node.area_name in MARKET_MAKER_NAMES:
                return cls(ref.place[uid][1])
        return cls(None)

    def down_fees(self, tree: AnyTree) -> dict[str, float]:
        """:func:`market_maker_down_fees` of ``tree``, walking only the way."""
        if self.markets is None:
            return {uid: 0.0 for uid in tree}
        fees: list[float] = []
        nodes: object = tree
        for uid in self.markets:
            node = nodes.get(uid) if isinstance(nodes, dict) else None
            if node is None or not node.is_market:
                return market_maker_down_fees(tree)  # this tree is shaped otherwise
            fees.append(_num(node.current_market_fee))
            nodes = node.children
        return {uid: sum(fees[i + 1 :]) for i, uid in enumerate(self.markets)}


def _way(tree: AnyTree) -> tuple[str, ...] | None:
    def walk(nodes: AnyTree, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for uid, node in nodes.items():
            if not node.is_market and node.area_name in MARKET_MAKER_NAMES:
                return path
            if isinstance(node.children, dict):
                found = walk(node.children, (*path, uid))
                if found is not None:
                    return found
        return None

    return walk(tree, ())


def stats_dict(stats: object) -> dict[str, float | None]:
    if not isinstance(stats, MarketStats):
        return {}
    return {
        "min_trade_rate": stats.min_trade_rate,
        "max_trade_rate": stats.max_trade_rate,
        "avg_trade_rate": stats.avg_trade_rate,
        "median_trade_rate": stats.median_trade_rate,
        "total_traded_energy_kWh": stats.total_traded_energy_kWh,
    }


def _opt(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def flatten_tree(
    tree: dict[str, GridNode],
    aggregator: str,
    rows: _Rows,
    markets: list[MarketView],
    own_markets: frozenset[str] = frozenset(),
    mm_way: MarketMakerWay | None = None,
    slot_fees: SlotFeeMap | None = None,
    seen: dict[str, float] | None = None,
) -> None:
    """Append the aggregator's own assets (rows) and own markets found in ``tree``.

    A market's fee to the Market Maker is ``fee + fees down the MM's way`` if the Market Maker
    hangs below it, else ``fee + its parent's fee to the MM``; an asset pays its parent's. Every
    fee is read from ``tree`` itself, except that a market in ``slot_fees`` (this aggregator's
    memory of the slot's market event) takes the remembered fee to the Market Maker; ``seen``
    collects that fee of every market holding one of the aggregator's assets (at a market
    event, for the memory). ``mm_way`` (found once per round) only spares walking the tree to
    find the Market Maker.

    Raises RoundError for a market fee the exchange cannot have sent (see :func:`market_fee`);
    rows appended before that are the caller's to drop (:func:`flatten_own`).
    """
    down = (mm_way or MarketMakerWay.find(tree)).down_fees(tree)
    # This loop runs once per asset of the fleet per round: locals instead of attribute lookups.
    unset = UNSET
    uuid_, name_, agg_, parent_, kind_ = (
        rows.uuid.append,
        rows.name.append,
        rows.aggregator.append,
        rows.parent.append,
        rows.kind.append,
    )
    need_, avail_, buy_, sell_ = (
        rows.need.append,
        rows.avail.append,
        rows.buy.append,
        rows.sell.append,
    )
    used_, free_, fee_, dev_ = (
        rows.used.append,
        rows.free.append,
        rows.fee.append,
        rows.deviation.append,
    )
    load, pv, storage, meter = (
        int(AssetKind.LOAD),
        int(AssetKind.PV),
        int(AssetKind.STORAGE),
        int(AssetKind.SMART_METER),
    )
    remembered = slot_fees or {}
    stack: list[tuple[dict[str, GridNode], str, str, float]] = [(tree, "", "", 0.0)]
    while stack:
        nodes, parent_uid, parent_name, parent_fee = stack.pop()
        first_row = len(rows.uuid)
        for uid, node in nodes.items():
            children = node.children
            if children is not unset:
                fee = market_fee(uid, node)  # checked even when remembered: a poisoned tree
                to_mm = remembered.get(uid)
                if to_mm is None:
                    below = down.get(uid)
                    to_mm = fee + below if below is not None else fee + parent_fee
                if uid in own_markets:
                    markets.append(
                        MarketView(
                            uuid=uid,
                            name=node.area_name,
                            aggregator=aggregator,
                            last_market_fee=_opt(node.last_market_fee),
                            current_market_fee=_opt(node.current_market_fee),
                            last_market_stats=stats_dict(node.last_market_stats),
                        )
                    )
                stack.append((children, uid, node.area_name, to_mm))
                continue
            info = node.asset_info
            if info is unset or info is None:
                continue  # another aggregator's asset, or a plain leaf such as the Market Maker
            need, avail = info.energy_requirement_kWh, info.available_energy_kWh
            buy, sell = info.energy_to_buy, info.energy_to_sell
            if buy is not unset or sell is not unset:
                kind = storage
            elif need is not unset:
                kind = meter if avail is not unset else load
            else:
                kind = pv
            uuid_(uid)
            name_(node.area_name)
            agg_(aggregator)
            parent_(parent_name)
            kind_(kind)
            need_(0.0 if need is unset else need)
            avail_(0.0 if avail is unset else avail)
            buy_(0.0 if buy is unset else buy)
            # gsy-e reports "-0.0" and tiny negatives for an empty storage; nothing to sell then.
            sell_(0.0 if sell is unset or sell < 0.0 else sell)
            used, free = info.used_storage, info.free_storage
            used_(0.0 if used is unset else used)
            free_(0.0 if free is unset else free)
            fee_(parent_fee)
            dev = info.unsettled_deviation_kWh
            dev_(dict(dev) if dev and dev is not unset else None)
        if seen is not None and parent_uid and len(rows.uuid) > first_row:
            seen[parent_uid] = parent_fee


def flatten_own(
    tree: dict[str, GridNode],
    aggregator: str,
    rows: _Rows,
    markets: list[MarketView],
    own_markets: frozenset[str],
    mm_way: MarketMakerWay,
    slot_fees: SlotFeeMap | None = None,
    seen: dict[str, float] | None = None,
) -> str | None:
    """:func:`flatten_tree`, all or nothing: on an unusable tree nothing of it is kept (rows,
    markets, ``seen``) and the reason is returned (the other aggregators' rows are untouched)."""
    first_row, first_market = len(rows.uuid), len(markets)
    try:
        flatten_tree(tree, aggregator, rows, markets, own_markets, mm_way, slot_fees, seen)
    except RoundError as exc:
        rows.truncate(first_row)
        del markets[first_market:]
        if seen is not None:
            seen.clear()
        return str(exc)
    return None


def rows_to_batch(rows: _Rows) -> AssetBatch:
    f64 = np.float64
    return AssetBatch(
        uuid=rows.uuid,
        name=rows.name,
        aggregator=rows.aggregator,
        parent_market=rows.parent,
        kind=np.asarray(rows.kind, dtype=np.int8),
        energy_requirement_kwh=np.asarray(rows.need, dtype=f64),
        available_energy_kwh=np.asarray(rows.avail, dtype=f64),
        energy_to_buy_kwh=np.asarray(rows.buy, dtype=f64),
        energy_to_sell_kwh=np.asarray(rows.sell, dtype=f64),
        used_storage_kwh=np.asarray(rows.used, dtype=f64),
        free_storage_kwh=np.asarray(rows.free, dtype=f64),
        grid_fee=np.asarray(rows.fee, dtype=f64),
        unsettled_deviation_kwh=rows.deviation
        if any(d is not None for d in rows.deviation)
        else [],
    )


@dataclass(slots=True)
class _LeanRows:
    """Rows of lean trees: each own leaf's uuid and node, its columns made for all at once."""

    uuid: list[str] = field(default_factory=list)
    node: list[_LeanNode] = field(default_factory=list)
    aggregator: list[str] = field(default_factory=list)
    parent: list[str] = field(default_factory=list)
    fee: list[float] = field(default_factory=list)

    def batch(self) -> AssetBatch:
        """What :func:`rows_to_batch` makes of the same rows appended by :func:`flatten_tree`."""
        n = len(self.uuid)
        infos = cast(list[_LeanInfo], [node.asset_info for node in self.node])
        f64 = np.float64
        need = np.fromiter([i.energy_requirement_kWh for i in infos], f64, n)
        avail = np.fromiter([i.available_energy_kWh for i in infos], f64, n)
        buy = np.fromiter([i.energy_to_buy for i in infos], f64, n)
        sell = np.fromiter([i.energy_to_sell for i in infos], f64, n)
        used = np.fromiter([i.used_storage for i in infos], f64, n)
        free = np.fromiter([i.free_storage for i in infos], f64, n)
        has_need, has_avail = ~np.isnan(need), ~np.isnan(avail)
        kind = np.where(
            ~np.isnan(buy) | ~np.isnan(sell),
            int(AssetKind.STORAGE),
            np.where(
                has_need,
                np.where(has_avail, int(AssetKind.SMART_METER), int(AssetKind.LOAD)),
                int(AssetKind.PV),
            ),
        ).astype(np.int8)
        deviation: list[dict[str, float] | None] = []
        raw = [i.unsettled_deviation_raw for i in infos]
        if any(raw):  # UNSET, None and {} are false
            deviation = [_deviation(d) for d in raw]
            if all(d is None for d in deviation):
                deviation = []
        return AssetBatch(
            uuid=self.uuid,
            name=[node.area_name for node in self.node],
            aggregator=self.aggregator,
            parent_market=self.parent,
            kind=kind,
            energy_requirement_kwh=np.where(has_need, need, 0.0),
            available_energy_kwh=np.where(has_avail, avail, 0.0),
            energy_to_buy_kwh=np.where(np.isnan(buy), 0.0, buy),
            # as flatten_tree: absent or negative (gsy-e's tiny negatives) is 0.0, -0.0 stays
            energy_to_sell_kwh=np.where(sell >= 0.0, sell, 0.0),
            used_storage_kwh=np.where(np.isnan(used), 0.0, used),
            free_storage_kwh=np.where(np.isnan(free), 0.0, free),
            grid_fee=np.fromiter(self.fee, f64, n),
            unsettled_deviation_kwh=deviation,
        )


def _deviation(raw: dict[str, float | None] | UnsetType | None) -> dict[str, float] | None:
    """``unsettled_deviation_kWh`` as :func:`flatten_tree` keeps it: its numbers, or None."""
    if not isinstance(raw, dict):
        return None
    return {slot: kwh for slot, kwh in raw.items() if kwh is not None} or None


def _flatten_lean(
    tree: _LeanTree,
    aggregator: str,
    rows: _LeanRows,
    markets: list[MarketView],
    own_markets: frozenset[str],
    mm_way: MarketMakerWay,
    slot_fees: SlotFeeMap | None = None,
    seen: dict[str, float] | None = None,
) -> str | None:
    """:func:`flatten_own` of a lean tree: the same rows, markets, fees and reasons, in the same
    order. A leaf costs a check and two appends here; its columns are made by
    :meth:`_LeanRows.batch`, for every tree of the shard at once."""
    down = mm_way.down_fees(tree)
    unset = UNSET
    remembered = slot_fees or {}
    uids: list[str] = []
    leaves: list[_LeanNode] = []
    parents: list[str] = []
    fees: list[float] = []
    found: list[MarketView] = []
    fees_seen: dict[str, float] = {}
    uid_, leaf_ = uids.append, leaves.append
    # The order of flatten_tree's walk: each market's leaves, then its markets last first.
    stack: list[tuple[dict[str, _LeanNode], str, str, float]] = [(tree, "", "", 0.0)]
    try:
        while stack:
            nodes, parent_uid, parent_name, parent_fee = stack.pop()
            first = len(uids)
            for uid, node in nodes.items():
                children = node.children
                if children is not unset:
                    fee = market_fee(uid, node)  # checked even when remembered: a poisoned tree
                    to_mm = remembered.get(uid)
                    if to_mm is None:
                        below = down.get(uid)
                        to_mm = fee + below if below is not None else fee + parent_fee
                    if uid in own_markets:
                        found.append(
                            MarketView(
                                uuid=uid,
                                name=node.area_name,
                                aggregator=aggregator,
                                last_market_fee=_opt(node.last_market_fee),
                                current_market_fee=_opt(node.current_market_fee),
                                last_market_stats=stats_dict(node.last_market_stats),
                            )
                        )
                    stack.append((children, uid, node.area_name, to_mm))
                    continue
                info = node.asset_info
                if info is not unset and info is not None:
                    uid_(uid)
                    leaf_(node)
            k = len(uids) - first
            if k:
                parents += [parent_name] * k
                fees += [parent_fee] * k
                if parent_uid:
                    fees_seen[parent_uid] = parent_fee
    except RoundError as exc:
        return str(exc)
    rows.uuid += uids
    rows.node += leaves
    rows.aggregator += [aggregator] * len(uids)
    rows.parent += parents
    rows.fee += fees
    markets += found
    if seen is not None:
        seen.update(fees_seen)
    return None


def _concat(batches: list[AssetBatch]) -> AssetBatch:
    """One batch of ``batches``' rows, in order."""
    if len(batches) == 1:
        return batches[0]
    deviation: list[dict[str, float] | None] = []
    if any(b.unsettled_deviation_kwh for b in batches):
        for b in batches:
            deviation += b.unsettled_deviation_kwh or [None] * len(b)
    return AssetBatch(
        uuid=[u for b in batches for u in b.uuid],
        name=[x for b in batches for x in b.name],
        aggregator=[x for b in batches for x in b.aggregator],
        parent_market=[x for b in batches for x in b.parent_market],
        kind=np.concatenate([b.kind for b in batches]),
        energy_requirement_kwh=np.concatenate([b.energy_requirement_kwh for b in batches]),
        available_energy_kwh=np.concatenate([b.available_energy_kwh for b in batches]),
        energy_to_buy_kwh=np.concatenate([b.energy_to_buy_kwh for b in batches]),
        energy_to_sell_kwh=np.concatenate([b.energy_to_sell_kwh for b in batches]),
        used_storage_kwh=np.concatenate([b.used_storage_kwh for b in batches]),
        free_storage_kwh=np.concatenate([b.free_storage_kwh for b in batches]),
        grid_fee=np.concatenate([b.grid_fee for b in batches]),
        unsettled_deviation_kwh=deviation,
    )


RoundEvent = MarketEvent | TickEvent | MarketEventHead | TickEventHead
"""A round's event: parsed whole (one process) or with its tree left raw (ingress)."""


def has_tree(event: RoundEvent) -> bool:
    """False for the first slot's empty trees: such events are skipped, not evaluated."""
    if isinstance(event, MarketEventHead | TickEventHead):
        return event.has_tree
    return bool(event.grid_tree)


def round_context(
    events: list[tuple[str, RoundEvent]], slot_length_s: int = 900
) -> tuple[RoundKey, TickContext]:
    """The round's key and the context every strategy of it reads, from its events' headers.

    Raises RoundError for a round that cannot be evaluated (the first slot's empty trees and null
    rates, events of different rounds); the caller counts and skips it.
    """
    if not events:
        raise RoundError("no events")
    first = events[0][1]
    key = RoundKey.of(first)
    for aggregator, event in events:
        if RoundKey.of(event) != key:
            raise RoundError(f"event of {aggregator} is for {RoundKey.of(event).id}, not {key.id}")
    rates = [(e.feed_in_tariff_rate, e.market_maker_rate) for _, e in events if has_tree(e)]
    if not rates or rates[0][0] is None or rates[0][1] is None:
        raise RoundError(
            f"round {key.id}: empty grid tree or null rates (the exchange's first slot)"
        )
    fit, mmr = rates[0]
    assert fit is not None and mmr is not None
    ctx = TickContext(
        market_slot=key.market_slot,
        next_market_slot=next_slot(key.market_slot, slot_length_s),
        tick_index=key.tick_index,
        num_ticks=int(first.num_ticks),
        is_market_event=any(isinstance(e, MarketEvent | MarketEventHead) for _, e in events),
        feed_in_tariff_rate=float(fit),
        market_maker_rate=float(mmr),
        slot_length_s=slot_length_s,
    )
    return key, ctx


def build_round(
    events: list[tuple[str, MarketEvent | TickEvent]],
    own_markets: dict[str, frozenset[str]] | None = None,
    slot_length_s: int = 900,
    memory: SlotFees | None = None,
) -> RoundInput:
    """One round from ``(aggregator uuid, event)`` pairs of the same slot and tick, flattened in
    this process (the single-process loop; the pipeline flattens per shard, in workers).

    With ``memory``, a market event's fees are remembered in it and a tick of the same slot is
    priced with them (an aggregator it has nothing for is priced from its tree).

    Raises RoundError for a round that cannot be evaluated (see :func:`round_context`).
    """
    key, ctx = round_context(list(events), slot_length_s)
    rows = _Rows()
    markets: list[MarketView] = []
    unusable: dict[str, str] = {}
    record = memory is not None and ctx.is_market_event
    remembered = memory.of(key.market_slot) if memory is not None and not record else {}
    seen_fees: dict[str, dict[str, float]] = {}
    # Where the Market Maker hangs is the same in every tree of a round: find it once.
    mm_way = next(
        (MarketMakerWay.find(e.grid_tree) for _, e in events if e.grid_tree), MarketMakerWay(())
    )
    own = own_markets or {}
    for aggregator, event in events:
        if event.grid_tree:
            seen: dict[str, float] | None = {} if record else None
            why = flatten_own(
                event.grid_tree,
                aggregator,
                rows,
                markets,
                own.get(aggregator, frozenset()),
                mm_way,
                remembered.get(aggregator),
                seen,
            )
            if seen:
                seen_fees[aggregator] = seen
            if why is not None:
                unusable[aggregator] = f"grid_tree: {why}"
                # No worker reports it on this path (the one-process loop): say it here.
                log.error("round %s: event of aggregator %s skipped: %s", key.id, aggregator, why)
    out = RoundInput(
        key=key,
        ctx=ctx,
        assets=rows_to_batch(rows),
        markets=markets,
        aggregators=[a for a, _ in events],
        unusable=unusable,
        slot_fees=seen_fees,
    )
    if record and memory is not None:
        memory.remember(key.market_slot, seen_fees)
    return out


def build_round_from_heads(
    events: list[tuple[str, MarketEventHead | TickEventHead]],
    own_markets: Mapping[str, frozenset[str]] | None = None,
    slot_length_s: int = 900,
    memory: SlotFees | None = None,
) -> RoundInput:
    """:func:`build_round` from events whose trees are still raw (ingress's model): the trees
    go through :func:`flatten_parts`, as a worker's shard does, so full trees are cut from the
    round's first (:mod:`gridfleet.platform.tree_cut`) instead of each decoded whole."""
    key, ctx = round_context(list(events), slot_length_s)
    record = memory is not None and ctx.is_market_event
    remembered = memory.of(key.market_slot) if memory is not None and not record else {}
    parts = [TreePart(a, bytes(e.grid_tree)) for a, e in events if e.has_tree]
    flat = flatten_parts(parts, own_markets or {}, remembered, record)
    for aggregator, why in flat.unusable.items():
        # No worker reports it on this path (the one-process loop): say it here.
        log.error("round %s: event of aggregator %s skipped: %s", key.id, aggregator, why)
    if record and memory is not None:
        memory.remember(key.market_slot, flat.slot_fees)
    return RoundInput(
        key=key,
        ctx=ctx,
        assets=flat.assets,
        markets=flat.markets,
        aggregators=[a for a, _ in events],
        unusable=flat.unusable,
        slot_fees=flat.slot_fees,
    )


@dataclass(slots=True)
class TreePart:
    """One aggregator's raw ``grid_tree`` in a shard, and which of its assets the shard takes.

    Shards are cut along aggregators, so a tree is parsed by one worker only. An aggregator with
    more assets than a shard holds is split: each of its shards parses the tree and keeps the
    rows ``[start, stop)`` of its assets in tree order (``stop=None``: to the end).
    """

    aggregator: str
    tree: bytes
    start: int = 0
    stop: int | None = None


@dataclass(slots=True)
class FlatParts:
    assets: AssetBatch
    markets: list[MarketView]
    unusable: dict[str, str]  # aggregator -> why its tree could not be used
    # with ``record``: aggregator -> the fees to remember for the slot (see SlotFees)
    slot_fees: dict[str, dict[str, float]] = field(default_factory=dict)


CUT_MIN_BYTES = 256 * 1024
"""Trees from this size on are cut from the shard's first one (:mod:`gridfleet.platform.tree_cut`):
full trees (every aggregator gets the whole grid); pruned ones are small and all different."""


def flatten_parts(
    parts: list[TreePart],
    own_markets: Mapping[str, frozenset[str]],
    slot_fees: Mapping[str, SlotFeeMap] | None = None,
    record: bool = False,
    *,
    lean: bool = True,
) -> FlatParts:
    """Parse and flatten the trees of a shard (what :func:`build_round` does for a whole round).

    A tree that does not parse is reported in ``unusable`` and skipped: its aggregator gets no
    batch this tick, the others are unaffected; so is a tree with a market fee the exchange cannot
    have sent. Where the Market Maker hangs is found in the shard's first tree, as
    :func:`build_round` does in the round's first; each tree's fees are its own, or its
    aggregator's ``slot_fees`` (remembered at the slot's market event). ``record`` (a market
    event): collect each aggregator's fees to remember into the result's ``slot_fees``.

    Trees not cut from a reference are decoded into the lean model (:class:`_LeanNode`), the
    same rows at about half the cost; ``lean=False`` decodes them into the wire model and
    flattens them with :func:`flatten_own` (the path the lean one is tested against).
    """
    rows = _Rows()
    lean_rows = _LeanRows()
    chunks: list[AssetBatch] = []  # rows flattened so far, in order, when both paths were taken
    chunked = 0  # rows in ``chunks``
    remembered = slot_fees or {}
    seen_fees: dict[str, dict[str, float]] = {}
    markets: list[MarketView] = []
    mm_way: MarketMakerWay | None = None
    unusable: dict[str, str] = {}
    keep: list[np.ndarray] = []
    sliced = False
    ref: Reference | None = None  # the shard's first whole full tree (see tree_cut)
    ref_error: str | None = None  # what made it unusable: every tree cut from it shares that
    for part in parts:
        own = own_markets.get(part.aggregator, frozenset())
        tree: GridTree | None = None
        lean_tree: _LeanTree | None = None
        if ref is not None and mm_way is not None:
            tree = ref.cut(part.tree, own, mm_way.markets)
            if tree is not None and ref_error is not None:
                unusable[part.aggregator] = ref_error
                continue
        is_ref = False
        if tree is None:
            may_be_ref = ref is None and len(part.tree) >= CUT_MIN_BYTES and len(parts) > 1
            try:
                if lean and not may_be_ref:
                    lean_tree = decode(part.tree, _LeanTree)
                else:
                    tree = decode(part.tree, GridTree)
            except ProtocolError as exc:
                unusable[part.aggregator] = f"grid_tree: {exc}"
                continue
            if tree is not None and may_be_ref:
                ref = Reference.of(part.tree, tree)
                is_ref = ref is not None
        if mm_way is None:
            mm_way = (
                MarketMakerWay.in_reference(ref)
                if is_ref and ref is not None
                else MarketMakerWay.find(cast(AnyTree, tree if lean_tree is None else lean_tree))
            )
        first = chunked + len(rows.uuid) + len(lean_rows.uuid)
        mine: list[MarketView] = []
        seen: dict[str, float] | None = {} if record else None
        agg_fees = remembered.get(part.aggregator)
        if lean_tree is not None:
            if rows.uuid:  # the other path's rows come first
                chunks.append(rows_to_batch(rows))
                chunked, rows = chunked + len(rows.uuid), _Rows()
            why = _flatten_lean(
                lean_tree, part.aggregator, lean_rows, mine, own, mm_way, agg_fees, seen
            )
        else:
            assert tree is not None
            if lean_rows.uuid:
                chunks.append(lean_rows.batch())
                chunked, lean_rows = chunked + len(lean_rows.uuid), _LeanRows()
            why = flatten_own(tree, part.aggregator, rows, mine, own, mm_way, agg_fees, seen)
        if seen:
            seen_fees[part.aggregator] = seen
        if why is not None:
            unusable[part.aggregator] = f"grid_tree: {why}"
            if is_ref:  # a market's fee: every tree with the same markets has it
                ref_error = unusable[part.aggregator]
            continue
        last = chunked + len(rows.uuid) + len(lean_rows.uuid)
        if part.start or part.stop is not None:
            sliced = True
            stop = last if part.stop is None else min(last, first + part.stop)
            keep.append(np.arange(min(first + part.start, stop), stop))
        else:
            keep.append(np.arange(first, last))
        if part.start == 0:
            markets.extend(mine)  # a split aggregator's markets ride with its first shard
    if lean_rows.uuid:
        chunks.append(lean_rows.batch())
    if rows.uuid or not chunks:
        chunks.append(rows_to_batch(rows))
    batch = _concat(chunks)
    if sliced:
        batch = batch.take(np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64))
    return FlatParts(batch, markets, unusable, seen_fees)
