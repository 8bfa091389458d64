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
from typing import Literal

import numpy as np
import orjson

from gridfleet.platform.simulator.grid import Grid, Kind
from gridfleet.platform.simulator.state import ExchangeState, TradeReport

TreeMode = Literal["full", "pruned"]

# Piece tables of a template: (table, index)
HEAD, OWN, OTHER, LIT = 0, 1, 2, 3
_LITERALS = [b",", b"}}", b""]
COMMA, CLOSE, MM = 0, 1, 2


def _num(x: float | int | None) -> bytes:
    return orjson.dumps(x)


def r8(a: np.ndarray) -> list[float]:
    """Rounded to 8 decimals, as Python floats (their repr is valid JSON)."""
    return list(np.round(a, 8).tolist())


class EventBuilder:
    """Serialises events for all aggregators of one simulation."""

    def __init__(self, grid: Grid, mode: TreeMode = "full") -> None:
        if mode not in ("full", "pruned"):
            raise ValueError(f"tree mode must be 'full' or 'pruned', not {mode!r}")
        self.grid = grid
        self.mode = mode
        self._uuid_json = [orjson.dumps(u) for u in grid.asset_uuid]
        self._name_json = [orjson.dumps(n) for n in grid.asset_name]
        self.other_leaf = [
            u + b':{"area_name":' + n + b"}"
            for u, n in zip(self._uuid_json, self._name_json, strict=True)
        ]
        self.mm_leaf = (
            orjson.dumps(grid.market_maker_uuid)
            + b':{"area_name":'
            + orjson.dumps(grid.market_maker_name)
            + b"}"
        )
        self.heads: list[bytes] = [b""] * len(grid.markets)
        self.own_leaf: dict[int, bytes] = {}
        self._literals = [*_LITERALS]
        self._literals[MM] = self.mm_leaf
        self._templates: dict[str, list[tuple[int, int]]] = {}

    # ------------------------------------------------------------------ shared pieces

    def refresh_heads(self, state: ExchangeState) -> None:
        """Market heads: statistics of the last slot, last and current fees."""
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
            body = orjson.dumps(node)
            self.heads[m.index] = orjson.dumps(m.uuid) + b":" + body[:-1] + b',"children":{'

    def refresh_own_leaves(self, state: ExchangeState, assets: Iterable[int]) -> None:
        """Leaves with ``asset_info`` for the given (selected) assets, from the state arrays."""
        idx = np.fromiter(assets, dtype=np.int64)
        self.own_leaf = {}
        if len(idx) == 0:
            return
        g = self.grid
        kind = g.kind[idx]
        traded = r8(state.bought[idx] + state.sold[idx])
        cost = r8(state.cost[idx])
        req = r8(np.maximum(state.demand[idx] - state.bought[idx], 0.0))
        avail = r8(np.maximum(state.demand[idx] - state.sold[idx], 0.0))
        a_bid = r8(state.active_bid[idx])
        a_off = r8(state.active_offer[idx])
        to_buy = r8(
            np.maximum(state.buy_limit[idx] - state.bought[idx] - state.active_bid[idx], 0.0)
        )
        to_sell = r8(
            np.maximum(state.sell_limit[idx] - state.sold[idx] - state.active_offer[idx], 0.0)
        )
        used = r8(state.used[idx])
        free = r8(g.storage_capacity_kwh[idx] - state.used[idx])
        l_tr = r8(state.last_traded[idx])
        l_co = r8(state.last_cost[idx])
        out = self.own_leaf
        for i, a in enumerate(idx.tolist()):
            k = kind[i]
            if k == Kind.LOAD:
                info = (
                    f'{{"energy_requirement_kWh":{req[i]!r},"energy_active_in_bids":{a_bid[i]!r},'
                    f'"energy_traded":{traded[i]!r},"total_cost":{cost[i]!r}}}'
                )
            elif k == Kind.PV:
                info = (
                    f'{{"available_energy_kWh":{avail[i]!r},"energy_active_in_offers":{a_off[i]!r},'
                    f'"energy_traded":{traded[i]!r},"total_cost":{cost[i]!r}}}'
                )
            else:
                info = (
                    f'{{"energy_to_sell":{to_sell[i]!r},"energy_active_in_bids":{a_bid[i]!r},'
                    f'"energy_to_buy":{to_buy[i]!r},"energy_active_in_offers":{a_off[i]!r},'
                    f'"free_storage":{free[i]!r},"used_storage":{used[i]!r},'
                    f'"energy_traded":{traded[i]!r},"total_cost":{cost[i]!r}}}'
                )
            out[a] = b"".join(
                (
                    self._uuid_json[a],
                    b':{"asset_info":',
                    info.encode(),
                    f',"last_slot_asset_info":{{"energy_traded":{l_tr[i]!r},"total_cost":{l_co[i]!r}}},"asset_bill":null,"area_name":'.encode(),
                    self._name_json[a],
                    b"}",
                )
            )

    # ------------------------------------------------------------------ templates

    def template(
        self, key: str, own_assets: Iterable[int], own_markets: Iterable[int] = ()
    ) -> list[tuple[int, int]]:
        """Build (and cache under ``key``) the piece list of one aggregator's tree."""
        g = self.grid
        own = set(own_assets)
        if self.mode == "full":
            keep_m: set[int] | None = None
        else:
            keep_m = set()
            for m in {int(g.asset_market[a]) for a in own} | set(own_markets):
                keep_m.update(g.path_to_root(m))
        pieces: list[tuple[int, int]] = []

        def emit(m: int) -> None:
            pieces.append((HEAD, m))
            first = True
            market = g.markets[m]
            for c in market.child_markets:
                if keep_m is None or c in keep_m:
                    if not first:
                        pieces.append((LIT, COMMA))
                    emit(c)
                    first = False
            for a in market.assets:
                if a in own:
                    piece = (OWN, a)
                elif keep_m is None:
                    piece = (OTHER, a)
                else:
                    continue
                if not first:
                    pieces.append((LIT, COMMA))
                pieces.append(piece)
                first = False
            if market.has_market_maker:
                if not first:
                    pieces.append((LIT, COMMA))
                pieces.append((LIT, MM))
            pieces.append((LIT, CLOSE))

        if g.markets:
            emit(0)
        self._templates[key] = pieces
        return pieces

    def forget(self, key: str) -> None:
        self._templates.pop(key, None)

    def tree(self, key: str) -> bytes:
        """The serialised ``grid_tree`` value (with braces) for the aggregator ``key``."""
        tables = (self.heads, self.own_leaf, self.other_leaf, self._literals)
        pieces = self._templates.get(key, [])
        return b"{" + b"".join([tables[t][i] for t, i in pieces]) + b"}"

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

    def trade_event(
        self, trade_list: list[dict[str, object]], tree: bytes, fit: float | None, mmr: float | None
    ) -> bytes:
        return b"".join(
            (
                b'{"trade_list":',
                orjson.dumps(trade_list),
                b',"grid_tree":',
                tree,
                b',"feed_in_tariff_rate":',
                _num(fit),
                b',"market_maker_rate":',
                _num(mmr),
                b',"event":"trade","simulation_id":null,"num_ticks":10.0}',
            )
        )


FINISH_EVENT = b'{"event":"finish","simulation_id":null,"num_ticks":10.0}'


def trade_rows(
    report: TradeReport, grid: Grid, owner: dict[int, str], time_str: str, seq: int
) -> dict[str, list[dict[str, object]]]:
    """Trade-list entries per aggregator key: each side of a trade goes to its asset's owner,
    with the counterparty shown as ``anonymous`` (as gsy-e does)."""
    out: dict[str, list[dict[str, object]]] = {}
    names = grid.asset_name
    mm = grid.market_maker_name
    for i in range(len(report)):
        b, s = report.buyer[i], report.seller[i]
        price, fee = round(report.price[i], 8), round(report.fee[i], 8)
        base = {
            "trade_id": f"00000000-0000-4000-9000-{seq + i:012x}",
            "time": time_str,
            "trade_price": price,
            "traded_energy": report.energy[i],
            "total_fee": fee,
            "local_market_fee": fee,
        }
        b_name = names[b] if b >= 0 else mm
        s_name = names[s] if s >= 0 else mm
        residual_bid = report.bid_id[i] if report.bid_residual[i] else "None"
        residual_offer = report.offer_id[i] if report.offer_residual[i] else "None"
        for asset, is_buyer in ((b, True), (s, False)):
            agg = owner.get(asset) if asset >= 0 else None
            if agg is None:
                continue
            out.setdefault(agg, []).append(
                {
                    "event": "trade",
                    "asset_id": grid.asset_uuid[asset],
                    **base,
                    "seller": "anonymous" if is_buyer else s_name,
                    "buyer": b_name if is_buyer else "anonymous",
                    "seller_origin": s_name,
                    "buyer_origin": b_name,
                    "bid_id": report.bid_id[i],
                    "offer_id": report.offer_id[i],
                    "residual_bid_id": residual_bid,
                    "residual_offer_id": residual_offer,
                }
            )
    return out
