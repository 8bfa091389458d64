"""Build every aggregator's event JSON from shared, pre-serialised pieces.

gsy-e serialises the whole grid tree once per aggregator and event. Here the tree is cut into
byte pieces that are serialised once per tick and shared:

- one *head* per market (``"<uuid>":{"last_market_bill":...,"area_name":...,"children":{``),
  rebuilt only when its statistics or fees change (once per slot, or on ``grid_fees``);
- one *own leaf* per selected asset (``"<uuid>":{"asset_info":{...},...}``), rebuilt per tick;
- one *other leaf* per asset (``"<uuid>":{"area_name":"..."}``), built once.

Each aggregator has a *template*: the list of pieces its tree is made of, in order, rebuilt only
when its selection changes. Building an event is then one ``b"".join`` over the template.

Tree modes:

- ``full``: every market and every asset, ``asset_info`` only on the aggregator's own assets
  (gsy-e's behaviour);
- ``pruned``: only the markets on the paths from the aggregator's own assets (and selected
  markets) to the root, its own assets, and the Market Maker.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import Literal

import numpy as np
import orjson

from gridfleet.simulator.grid import LOAD, PV, STORAGE, Grid
from gridfleet.simulator.numfmt import reprs_f64_str
from gridfleet.simulator.state import ExchangeState

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

    All pieces live in one list, ``pool``: market heads, then own leaves, then other leaves,
    then literals (comma, closers, the Market Maker). A template is a list of positions in
    the pool, so a tree is ``"".join(itemgetter(*template)(pool))``: one C-level pass.
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
        self._uuid_js = [_js(u) for u in grid.asset_uuid]
        self._uuid_arr = np.array(self._uuid_js, dtype=object)
        self._name_js = [_js(n) for n in grid.asset_name]
        self.name_js = self._name_js  # asset names as JSON strings (trade rows)
        other = [
            f'{u}:{{"area_name":{n}}}' for u, n in zip(self._uuid_js, self._name_js, strict=True)
        ]
        mm = f'{_js(grid.market_maker_uuid)}:{{"area_name":{_js(grid.market_maker_name)}}}'
        self.pool: list[str] = [""] * n_m + [""] * n_a + other + [",", "}}", mm, "{", "}"]
        self._tail: list[str] = [""] * n_a  # last-slot part of own leaves, rebuilt per slot
        self._tail_slot = -1
        self._last_cols: np.ndarray | None = None
        self._last_idx: np.ndarray | None = None
        self._templates: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ shared pieces

    def refresh_heads(self, state: ExchangeState) -> None:
        """Market heads: statistics of the last slot, last and current fees, as gsy-e's tree
        has them: ``current_market_fee`` is the area's fee now (after a ``grid_fees`` command
        mid-slot, the next slot's), ``last_market_fee`` the last closed market's fee."""
        current = state.fee_rates()
        for m in self.grid.markets:
            cur = float(current[m.index])
            node = {
                "last_market_bill": {"accumulated_trades": {}, "external_trades": {}},
                "last_market_stats": state.stats.last_market_stats(m.index),
                "last_market_fee": float(state.last_fee[m.index]),
                "current_market_fee": cur if cur else None,
                "area_name": m.name,
            }
            body = orjson.dumps(node).decode()
            self.pool[self._head0 + m.index] = f'{_js(m.uuid)}:{body[:-1]},"children":{{'

    def refresh_own_leaves(self, state: ExchangeState, assets: Iterable[int]) -> None:
        """Leaves with ``asset_info`` for the given (selected) assets, from the state arrays.

        The hot part of an event round (every changed leaf per tick): numbers are rendered in
        bulk (as ``repr`` writes them) and the leaves of each kind made by one join
        (:meth:`_leaves`).
        """
        idx = np.fromiter(assets, dtype=np.int64)
        if len(idx) == 0:
            return
        g = self.grid
        fresh = self._tail_slot != state.slot_index
        if fresh:
            l_tr = reprs_f64_str(np.round(state.last_traded, 8))
            l_co = reprs_f64_str(np.round(state.last_cost, 8))
            self._tail = [
                f',"last_slot_asset_info":{{"energy_traded":{t},"total_cost":{c}}},"asset_bill":null,"area_name":{n}}}'
                for t, c, n in zip(l_tr, l_co, self._name_js, strict=True)
            ]
            self._tail_slot = state.slot_index
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
            fresh
            or prev is None
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
        sub = cols[:, changed]
        idx = idx[changed]
        kind = g.kind[idx]
        pool, own0 = self.pool, self._own0
        for k, shape in _LEAF_SHAPES.items():
            sel = np.flatnonzero(kind == k)
            if not len(sel):
                continue
            a_sel = idx[sel]
            a_l = a_sel.tolist()
            dev = (
                [f"{settlement.info_json(a)}," for a in a_l]
                if settlement is not None and k != STORAGE
                else None
            )
            leaves = self._leaves(shape, a_sel, sub[:, sel], dev)
            list(map(pool.__setitem__, (own0 + a_sel).tolist(), leaves))

    def _leaves(
        self,
        shape: tuple[str, list[tuple[str, int]]],
        assets: np.ndarray,
        cols: np.ndarray,
        dev: list[str] | None,
    ) -> list[str]:
        """Own leaves of assets of one kind: ``uuid``, the opening, the settlement deviations
        (``dev``, loads and PVs), then per number its key and its value rendered in bulk (as
        ``repr`` writes it), the closing brace and the asset's tail. Each leaf's pieces sit in
        one flat list, put in place column by column; one join makes every leaf, cut apart at
        a NUL after each (JSON text holds no raw NUL)."""
        opening, numbers = shape
        n = len(assets)
        width = 2 * len(numbers) + 6
        row = ["", opening, "", *(x for key, _ in numbers for x in (key, "")), "}", "", "\0"]
        flat = row * n
        flat[0::width] = self._uuid_arr[assets].tolist()
        if dev is not None:
            flat[2::width] = dev
        for c, (_, r) in enumerate(numbers):
            flat[4 + 2 * c :: width] = reprs_f64_str(cols[r])
        flat[width - 2 :: width] = [self._tail[a] for a in assets.tolist()]
        # Joined and cut apart in chunks: one join of every leaf (30 MB at 100 000 assets)
        # takes fresh pages from the OS each time; a chunk's memory is reused for the next.
        leaves: list[str] = []
        step = _LEAF_CHUNK * width
        for lo in range(0, len(flat), step):
            leaves += "".join(flat[lo : lo + step]).split("\0")
            leaves.pop()
        return leaves

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
        return pieces

    def forget(self, key: str) -> None:
        self._templates.pop(key, None)

    def tree(self, key: str) -> bytes:
        """The serialised ``grid_tree`` value (with braces) for the aggregator ``key``."""
        pieces = self._templates.get(key)
        if pieces is None:
            return b"{}"
        return "".join(itemgetter(*pieces)(self.pool)).encode()

    # ------------------------------------------------------------------ envelopes

    @staticmethod
    def envelope(
        event: str,
        market_slot: str,
        completion: int,
        tree: bytes,
        fit: float | None,
        mmr: float | None,
    ) -> bytes:
        """A ``market`` or ``tick`` event around an already serialised tree."""
        return b"".join(
            (
                b'{"slot_completion":"',
                str(completion).encode(),
                b'%","market_slot":"',
                market_slot.encode(),
                b'","grid_tree":',
                tree,
                b',"feed_in_tariff_rate":',
                _num(fit),
                b',"market_maker_rate":',
                _num(mmr),
                b',"event":"',
                event.encode(),
                b'","simulation_id":null,"num_ticks":10.0}',
            )
        )


_LEAF_CHUNK = 1024  # leaves joined at a time (see EventBuilder._leaves)

# Own leaves per kind: the opening of asset_info, then (key, row of the numbers in
# refresh_own_leaves) per number, in gsy-e's order.
_LEAF_SHAPES: dict[int, tuple[str, list[tuple[str, int]]]] = {
    LOAD: (
        ':{"asset_info":{',
        [
            ('"energy_requirement_kWh":', 2),
            (',"energy_active_in_bids":', 4),
            (',"energy_traded":', 0),
            (',"total_cost":', 1),
        ],
    ),
    PV: (
        ':{"asset_info":{',
        [
            ('"available_energy_kWh":', 3),
            (',"energy_active_in_offers":', 5),
            (',"energy_traded":', 0),
            (',"total_cost":', 1),
        ],
    ),
    STORAGE: (
        ':{"asset_info":{',
        [
            ('"energy_to_sell":', 7),
            (',"energy_active_in_bids":', 4),
            (',"energy_to_buy":', 6),
            (',"energy_active_in_offers":', 5),
            (',"free_storage":', 9),
            (',"used_storage":', 8),
            (',"energy_traded":', 0),
            (',"total_cost":', 1),
        ],
    ),
}

FINISH_EVENT = b'{"event":"finish","simulation_id":null,"num_ticks":10.0}'
