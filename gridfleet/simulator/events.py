"""Build every aggregator's event JSON from shared, pre-serialised pieces.

gsy-e serialises the whole grid tree once per aggregator and event. Here the tree is cut into
byte pieces that are serialised once per tick and shared:

- one *head* per market (``"<uuid>":{"last_market_bill":...,"area_name":...,"children":{``),
  rebuilt only when its statistics or fees change (once per slot, or on ``grid_fees``);
- one *own leaf* per selected asset (``"<uuid>":{"asset_info":{...},...}``), rebuilt per tick;
- one *other leaf* per asset (``"<uuid>":{"area_name":"..."}``), built once.

Each aggregator has a *template*: the list of pieces its tree is made of, in order, rebuilt only
when its selection changes. All trees are laid out piece by piece in one array, an own leaf as
its own pieces (keys, numbers, tail), so a refresh writes the numbers that changed in place and
building a tree is one ``b"".join`` over its slice.

Tree modes:

- ``full``: every market and every asset, ``asset_info`` only on the aggregator's own assets
  (gsy-e's behaviour);
- ``pruned``: only the markets on the paths from the aggregator's own assets (and selected
  markets) to the root, its own assets, and the Market Maker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Literal

import numpy as np
import orjson
import pyarrow as pa

from gridfleet.simulator.arrow_text import floats, join, texts
from gridfleet.simulator.door import Pieces
from gridfleet.simulator.grid import LOAD, PV, STORAGE, Grid
from gridfleet.simulator.numfmt import reprs_f64, round8
from gridfleet.simulator.state import ExchangeState
from gridfleet.simulator.stats import MarketStats

TreeMode = Literal["full", "pruned"]


def _num(x: float | int | None) -> bytes:
    return orjson.dumps(x)


def r8(a: np.ndarray) -> list[float]:
    """Rounded to 8 decimals, as Python floats (their repr is valid JSON)."""
    return list(np.round(a, 8).tolist())


def _js(x: str) -> str:
    return orjson.dumps(x).decode()


class EventBuilder:
    """Serialises events for all aggregators of one simulation.

    Every tree is laid out, piece by piece, in one numpy object array of bytes, ``flat``: a
    tree is one slice of it, so building it is one ``b"".join``. Shared pieces (market heads,
    other leaves, commas, closers, the Market Maker) are the same object wherever they occur;
    an own leaf is one piece, re-rendered (in Arrow, column by column: uuid, keys, numbers,
    last-slot tail) only when its numbers changed and written to its place.

    Templates (which pieces a tree is made of) are kept as positions in the *pool* numbering:
    market heads, then own leaves, then other leaves, then literals. ``flat`` is laid out again
    from them (vectorised) when a template changes.
    """

    def __init__(self, grid: Grid, mode: TreeMode = "full") -> None:
        if mode not in ("full", "pruned"):
            raise ValueError(f"tree mode must be 'full' or 'pruned', not {mode!r}")
        self.grid = grid
        self.mode = mode
        n_m, n_a = len(grid.markets), grid.n_assets
        self._head0, self._own0, self._other0 = 0, n_m, n_m + n_a
        lit0 = n_m + 2 * n_a
        self._comma, self._close, self._mm = lit0, lit0 + 1, lit0 + 2
        self._open_tree, self._close_tree = lit0 + 3, lit0 + 4
        uuid_js = [_js(u) for u in grid.asset_uuid]
        self.name_js = [_js(n) for n in grid.asset_name]  # asset names as JSON (trade rows)
        self._name_b = [n.encode() for n in self.name_js]
        self._market_uuid_js = [orjson.dumps(m.uuid) for m in grid.markets]
        self._market_name_js = [orjson.dumps(m.name) for m in grid.markets]
        mm = f'{_js(grid.market_maker_uuid)}:{{"area_name":{_js(grid.market_maker_name)}}}'
        # the one-piece entries of the pool numbering (own leaves' slots stay unused)
        self._single = np.empty(lit0 + 5, dtype=object)
        self._single[: n_m + n_a] = b""
        self._single[n_m + n_a : lit0] = [
            f'{u}:{{"area_name":{n}}}'.encode() for u, n in zip(uuid_js, self.name_js, strict=True)
        ]
        self._single[lit0:] = [b",", b"}}", mm.encode(), b"{", b"}"]
        # per asset, the pieces of its own leaf that are not numbers or inner keys (see
        # _LEAF_SHAPES): its uuid and the opening; asset_info's closing brace and the
        # last-slot tail (made again per slot); and the leaf as last rendered
        self._lead = texts([f"{u}{_OPENING}".encode() for u in uuid_js])
        self._tail = texts([b"}"] * n_a)
        self._leaf = np.full(n_a, b"", dtype=object)
        self._tail_slot = -1
        self._last_cols: np.ndarray | None = None
        self._last_idx: np.ndarray | None = None
        self._templates: dict[str, list[int]] = {}
        self._layout: _Layout | None = None  # None: lay ``flat`` out again before using it

    # ------------------------------------------------------------------ shared pieces

    def refresh_heads(self, state: ExchangeState) -> None:
        """Market heads: statistics of the last slot, last and current fees, as gsy-e's tree
        has them: ``current_market_fee`` is the area's fee now (after a ``grid_fees`` command
        mid-slot, the next slot's), ``last_market_fee`` the last closed market's fee."""
        heads = market_heads(
            state.stats,
            state.last_fee,
            state.fee_rates(),
            self._market_uuid_js,
            self._market_name_js,
        )
        self._single[self._head0 : self._head0 + len(heads)] = heads
        lay = self._layout
        if lay is not None:
            lay.flat[lay.head_at] = self._single[lay.head_piece]

    def refresh_own_leaves(self, state: ExchangeState, assets: Iterable[int]) -> None:
        """Leaves with ``asset_info`` for the given (selected) assets, from the state arrays.

        The hot part of an event round (every changed leaf per tick): the numbers of the
        leaves that changed are rendered in bulk (as ``repr`` writes them) and written to
        their places in the trees.
        """
        idx = np.fromiter(assets, dtype=np.int64)
        if len(idx) == 0:
            return
        g = self.grid
        lay = self._lay_out()
        if self._tail_slot != state.slot_index:
            # every asset's tail in one join, cut apart at a NUL after each (JSON has none)
            flat = _TAIL_ROW * g.n_assets
            flat[1::7] = reprs_f64(np.round(state.last_traded, 8))
            flat[3::7] = reprs_f64(np.round(state.last_cost, 8))
            flat[5::7] = self._name_b
            tails = b"".join(flat).split(b"\0")
            tails.pop()
            self._tail = texts(tails)
            self._tail_slot = state.slot_index
            self._last_cols = None  # a new slot re-renders everything
        cols = np.stack(
            (
                state.bought[idx] + state.sold[idx],
                state.cost[idx],
                np.maximum(state.demand[idx] - state.bought[idx], 0.0),
                np.maximum(state.demand[idx] - state.sold[idx], 0.0),
                state.active_bid[idx],
                state.active_offer[idx],
                np.maximum(state.buy_limit[idx] - state.bought[idx] - state.active_bid[idx], 0.0),
                np.maximum(state.sell_limit[idx] - state.sold[idx] - state.active_offer[idx], 0.0),
                state.used[idx],
                g.storage_capacity_kwh[idx] - state.used[idx],
            )
        )
        cols = np.round(cols, 8)
        settlement = state.settlement
        if settlement is not None:
            # a deviation that changed (a trade, a cycle) re-renders the leaf too
            cols = np.vstack((cols, settlement.version[idx].astype(np.float64)))
        # Only re-render leaves whose numbers changed since the last tick (a re-sent bid of
        # the same energy changes nothing); a new slot re-renders everything.
        prev = self._last_cols
        if (
            prev is None
            or self._last_idx is None
            or prev.shape != cols.shape
            or not np.array_equal(self._last_idx, idx)
        ):
            changed = np.arange(len(idx))
        else:
            changed = np.flatnonzero((cols != prev).any(axis=0))
        self._last_cols, self._last_idx = cols, idx
        if len(changed) == 0:
            return
        if len(changed) < len(idx):  # (all changed: no copy of the columns)
            cols, idx = cols[:, changed], idx[changed]
        kind = g.kind[idx]
        for k, (keys, rows) in _LEAF_SHAPES.items():
            sel = np.flatnonzero(kind == k)
            if not len(sel):
                continue
            a_sel = idx[sel]
            first: pa.Array | bytes = keys[0]
            if settlement is not None and k != STORAGE:
                first = texts(
                    [f"{settlement.info_json(a)},".encode() + keys[0] for a in a_sel.tolist()]
                )
            pieces: list[pa.Array | bytes] = [self._lead.take(a_sel), first]
            for c, r in enumerate(rows):
                if c:
                    pieces.append(keys[c])
                pieces.append(floats(cols[r, sel]))
            pieces.append(self._tail.take(a_sel))
            self._leaf[a_sel] = join(*pieces).to_pylist()
        # the changed leaves in their places in the trees
        changed_leaf = np.zeros(g.n_assets, dtype=bool)
        changed_leaf[idx] = True
        at = np.flatnonzero(changed_leaf[lay.leaf_asset])
        lay.flat[lay.leaf_at[at]] = self._leaf[lay.leaf_asset[at]]

    # ------------------------------------------------------------------ templates

    def template(
        self, key: str, own_assets: Iterable[int], own_markets: Iterable[int] = ()
    ) -> list[int]:
        """Build (and cache under ``key``) the pool positions of one aggregator's tree."""
        g = self.grid
        own = set(own_assets)
        if self.mode == "full":
            keep_m: set[int] | None = None
        else:
            keep_m = set()
            for m in {int(g.asset_market[a]) for a in own} | set(own_markets):
                keep_m.update(g.path_to_root(m))
        pieces: list[int] = []

        def emit(m: int) -> None:
            pieces.append(self._head0 + m)
            first = True
            market = g.markets[m]
            for c in market.child_markets:
                if keep_m is None or c in keep_m:
                    if not first:
                        pieces.append(self._comma)
                    emit(c)
                    first = False
            for a in market.assets:
                if a in own:
                    piece = self._own0 + a
                elif keep_m is None:
                    piece = self._other0 + a
                else:
                    continue
                if not first:
                    pieces.append(self._comma)
                pieces.append(piece)
                first = False
            if market.has_market_maker:
                if not first:
                    pieces.append(self._comma)
                pieces.append(self._mm)
            pieces.append(self._close)

        if g.markets:
            emit(0)
        # the tree's braces are pieces too: one join makes it
        self._templates[key] = [self._open_tree, *pieces, self._close_tree]
        self._layout = None
        return pieces

    def forget(self, key: str) -> None:
        if self._templates.pop(key, None) is not None:
            self._layout = None

    def tree(self, key: str) -> bytes:
        """The serialised ``grid_tree`` value (with braces) for the aggregator ``key``."""
        lay = self._lay_out()
        span = lay.span.get(key)
        if span is None:
            return b"{}"
        return b"".join(lay.flat[span[0] : span[1]].tolist())

    def own_leaf(self, asset: int) -> bytes | None:
        """The asset's own leaf as it stands in a tree (None: in no tree's template)."""
        lay = self._lay_out()
        at = np.flatnonzero(lay.leaf_asset == asset)
        return None if not len(at) else bytes(lay.flat[lay.leaf_at[at[0]]])

    def lay_out(self) -> None:
        """Lay the trees out now (after templates changed) rather than in the next round that
        needs them: with full trees at 10 000 assets that is ~130 ms, which the first round
        with trees (slot 1's market round) paid on top of its own work."""
        self._lay_out()

    def _lay_out(self) -> _Layout:
        """``flat`` for the current templates (laid out again only after one changed): every
        template's pieces in turn, own leaves expanded to their pieces, with the numbers, tails
        and deviations last rendered."""
        if self._layout is not None:
            return self._layout
        keys = list(self._templates)
        lens = np.fromiter(map(len, self._templates.values()), dtype=np.int64, count=len(keys))
        t = np.fromiter(
            chain.from_iterable(self._templates.values()), dtype=np.int64, count=int(lens.sum())
        )
        own = (t >= self._own0) & (t < self._other0)
        flat = self._single[np.where(own, 0, t)]  # own leaves' places filled below
        leaf_at = np.flatnonzero(own)
        leaf_asset = t[own] - self._own0
        flat[leaf_at] = self._leaf[leaf_asset]
        bounds = np.concatenate(([0], np.cumsum(lens))).tolist()
        head = np.flatnonzero(t < self._own0)
        self._layout = _Layout(
            flat=flat,
            span={k: (bounds[i], bounds[i + 1]) for i, k in enumerate(keys)},
            head_at=head,
            head_piece=t[head],
            leaf_asset=leaf_asset,
            leaf_at=leaf_at,
        )
        return self._layout

    # ------------------------------------------------------------------ envelopes

    @staticmethod
    def envelope(
        event: str,
        market_slot: str,
        completion: int,
        tree: bytes,
        fit: float | None,
        mmr: float | None,
    ) -> Pieces:
        """A ``market`` or ``tick`` event around an already serialised tree, in three pieces
        (the tree is not copied: it is the aggregator's for the whole tick)."""
        return Pieces(
            (
                b'{"slot_completion":"%d%%","market_slot":"%b","grid_tree":'
                % (completion, market_slot.encode()),
                tree,
                b',"feed_in_tariff_rate":%b,"market_maker_rate":%b,"event":"%b",'
                b'"simulation_id":null,"num_ticks":10.0}' % (_num(fit), _num(mmr), event.encode()),
            )
        )


# An own leaf's pieces: its uuid and the opening of asset_info; its settlement deviations
# (loads and PVs, with settlement) and its first key; then its numbers, the keys between them;
# asset_info's closing brace and its last-slot tail. Per kind: the keys of its numbers and the
# row of each number in refresh_own_leaves's columns, in gsy-e's order.
_OPENING = ':{"asset_info":{'
_LEAF_SHAPES: dict[int, tuple[list[bytes], list[int]]] = {
    LOAD: (
        [
            b'"energy_requirement_kWh":',
            b',"energy_active_in_bids":',
            b',"energy_traded":',
            b',"total_cost":',
        ],
        [2, 4, 0, 1],
    ),
    PV: (
        [
            b'"available_energy_kWh":',
            b',"energy_active_in_offers":',
            b',"energy_traded":',
            b',"total_cost":',
        ],
        [3, 5, 0, 1],
    ),
    STORAGE: (
        [
            b'"energy_to_sell":',
            b',"energy_active_in_bids":',
            b',"energy_to_buy":',
            b',"energy_active_in_offers":',
            b',"free_storage":',
            b',"used_storage":',
            b',"energy_traded":',
            b',"total_cost":',
        ],
        [7, 4, 6, 5, 9, 8, 0, 1],
    ),
}
# an own leaf's last piece: asset_info's closing brace, the last slot's figures, the name
_TAIL_ROW = [
    b'},"last_slot_asset_info":{"energy_traded":',
    b"",
    b',"total_cost":',
    b"",
    b'},"asset_bill":null,"area_name":',
    b"",
    b"}\0",
]


@dataclass(slots=True)
class _Layout:
    """Where everything sits in ``flat``: each tree's span, the market heads (position and pool
    entry) and the own leaves (asset and position), per occurrence."""

    flat: np.ndarray
    span: dict[str, tuple[int, int]]
    head_at: np.ndarray
    head_piece: np.ndarray
    leaf_asset: np.ndarray
    leaf_at: np.ndarray


def market_heads(
    stats: MarketStats,
    last_fee: np.ndarray,
    current_fee: np.ndarray,
    uuid_js: list[bytes],
    name_js: list[bytes],
) -> list[bytes]:
    """Every market's head, ``"<uuid>":{...,"children":{``, as ``orjson.dumps`` writes gsy-e's
    node (tests/simulator/test_round_pieces.py holds it to that): the last slot's statistics
    (``null`` where the market saw no trade), the last and the current fee (``null`` when 0).

    Numbers are rendered in bulk: orjson writes a numpy float64 as it writes the same Python
    float, and :func:`round8` is ``round(x, 8)`` bit for bit.
    """
    n = len(uuid_js)
    traded = ~np.isnan(stats.avg_rate)
    cols = [stats.min_rate, stats.max_rate, stats.avg_rate, stats.median_rate, stats.volume]
    flat = _HEAD_ROW * n
    for c, col in enumerate(cols):
        text = _orjson_floats(round8(np.where(traded, col, 0.0)))
        flat[2 + 2 * c :: _HEAD_W] = [
            t if ok else b"null" for t, ok in zip(text, traded.tolist(), strict=True)
        ]
    flat[0::_HEAD_W] = uuid_js
    flat[12::_HEAD_W] = _orjson_floats(last_fee.astype(np.float64))
    cur = current_fee.astype(np.float64)
    flat[14::_HEAD_W] = [
        t if c else b"null" for t, c in zip(_orjson_floats(cur), cur.tolist(), strict=True)
    ]
    flat[16::_HEAD_W] = name_js
    heads = b"".join(flat).split(b"\0")
    heads.pop()
    return heads


def _orjson_floats(arr: np.ndarray) -> list[bytes]:
    """``[orjson.dumps(float(x)) for x in arr]`` in one call."""
    if not len(arr):
        return []
    return orjson.dumps(np.ascontiguousarray(arr), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(
        b","
    )


# a market head's pieces (see market_heads): uuid, statistics, fees, name
_HEAD_ROW = [
    b"",
    b':{"last_market_bill":{"accumulated_trades":{},"external_trades":{}},'
    b'"last_market_stats":{"min_trade_rate":',
    b"",
    b',"max_trade_rate":',
    b"",
    b',"avg_trade_rate":',
    b"",
    b',"median_trade_rate":',
    b"",
    b',"total_traded_energy_kWh":',
    b"",
    b'},"last_market_fee":',
    b"",
    b',"current_market_fee":',
    b"",
    b',"area_name":',
    b"",
    b',"children":{\0',
]
_HEAD_W = len(_HEAD_ROW)


FINISH_EVENT = b'{"event":"finish","simulation_id":null,"num_ticks":10.0}'
