"""Trade events: each aggregator's side of the tick's trades, around its tree.

A slot end settles tens of thousands of trades in one tick; each side of a trade goes to its
asset's owner (the counterparty shown as ``anonymous``, as gsy-e does), and each aggregator gets
one ``trade`` event with its entries and the same tree as its tick event.

:func:`trade_payloads` makes them in bulk; their readable definition (an f-string per entry) is
kept frozen in ``tests/simulator/reference/trade_events_v2.py``, which the tests hold it to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import orjson
import pyarrow as pa

from gridfleet.simulator import arrow_text
from gridfleet.simulator.door import Pieces
from gridfleet.simulator.grid import Grid
from gridfleet.simulator.numfmt import hex12s, round8
from gridfleet.simulator.state import TradeReport


def _js(x: str) -> str:
    return orjson.dumps(x).decode()


def owner_array(grid: Grid, owner: dict[int, str]) -> tuple[np.ndarray, list[str]]:
    """Asset -> position of its owning aggregator in the returned key list (-1: nobody)."""
    keys = sorted(set(owner.values()))
    pos = {k: i for i, k in enumerate(keys)}
    arr = np.full(grid.n_assets + 1, -1, dtype=np.int64)  # the extra last slot: Market Maker
    for a, agg in owner.items():
        arr[a] = pos[agg]
    return arr, keys


# An event's opening, an entry's start (an event's first entry without its comma), the end of
# its entries and the keys around its asset's name, per side (0: the buyer's, 1: the seller's).
_OPEN = b'{"trade_list":['
_ENTRY = b',{"event":"trade","asset_id":"'
_TREE = b'],"grid_tree":'
_SIDE_HEAD = arrow_text.texts([b',"seller":"anonymous","buyer":', b',"seller":'])
_SIDE_TAIL = arrow_text.texts([b',"seller_origin":', b',"buyer":"anonymous","seller_origin":'])


class AssetLabels:
    """A grid's asset uuids and names (the Market Maker's last) as text columns, encoded once."""

    def __init__(self, grid: Grid, name_js: list[str]) -> None:
        self.uuids = arrow_text.texts([x.encode() for x in grid.asset_uuid])
        self.names = arrow_text.texts([x.encode() for x in [*name_js, _js(grid.market_maker_name)]])
        arrow_text.warm_up()  # here, once per engine, rather than in its first trade tick


def trade_payloads(
    parts: Sequence[TradeReport],
    labels: AssetLabels,
    owner: tuple[np.ndarray, list[str]],
    time_str: str,
    seq: int,
    tree: Callable[[str], bytes],
    rates: tuple[float | None, float | None],
) -> dict[str, Pieces]:
    """Per aggregator key, in sending order, its ``trade`` event: the same bytes as
    :func:`trade_event` around the :func:`trade_rows` of each part (trade ids numbered on from
    ``seq``), an aggregator's entries of a part after those of the parts before; ``tree`` gives
    its tree, ``rates`` the feed-in tariff and Market Maker rates.

    A settling tick has ~40 000 trades: every entry is rendered by Arrow text columns (no
    Python object per entry), grouped by aggregator, so an aggregator's entries are one slice
    of their bytes, sent between its event's opening, tree and close without being copied.
    """
    parts = [p for p in parts if len(p)]
    if not parts:
        return {}
    own_arr, keys = owner
    buyer, seller = _column(parts, "buyer", np.int64), _column(parts, "seller", np.int64)
    keep, order, agg_of = _entries(parts, own_arr[buyer], own_arr[seller], len(keys))
    if not len(keep):
        return {}
    names = labels.names
    mm = len(names) - 1  # the Market Maker (-1) is the last name
    buyer, seller = np.where(buyer < 0, mm, buyer)[keep], np.where(seller < 0, mm, seller)[keep]
    t, side = order >> 1, order & 1  # the entry's trade (in keep) and side (1: the seller's)
    asset = np.where(side == 1, seller[t], buyer[t])
    entries = arrow_text.join(
        _ENTRY,
        labels.uuids.take(asset),
        _common(parts, keep, time_str, seq).take(t),
        _SIDE_HEAD.take(side),
        names.take(asset),
        _SIDE_TAIL.take(side),
        names.take(seller[t]),
        b',"buyer_origin":',
        names.take(buyer[t]),
        _order_ids(parts, keep).take(t),
    )
    close = b"".join(
        [
            b',"feed_in_tariff_rate":',
            orjson.dumps(rates[0]),
            b',"market_maker_rate":',
            orjson.dumps(rates[1]),
            b',"event":"trade","simulation_id":null,"num_ticks":10.0}',
        ]
    )
    offsets, data = arrow_text.spans(entries)
    firsts = np.flatnonzero(np.diff(agg_of, prepend=-1))  # each event's first entry
    bounds = offsets[[*firsts, len(order)]].tolist()
    out: dict[str, Pieces] = {}
    for k, lo, hi in zip(agg_of[firsts].tolist(), bounds[:-1], bounds[1:], strict=True):
        agg = keys[k]
        # lo + 1: the first entry without its comma
        out[agg] = Pieces((_OPEN, data[lo + 1 : hi], _TREE, tree(agg), close))
    return out


def _column(parts: list[TradeReport], name: str, dtype: type) -> np.ndarray:
    """One column of the parts' trades, one after the other."""
    return np.concatenate([np.asarray(getattr(p, name), dtype=dtype) for p in parts])


def _entries(
    parts: list[TradeReport], b_own: np.ndarray, s_own: np.ndarray, n_keys: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trades an aggregator owns a side of (``keep``), their owned sides (entry ``2j``: the
    buyer's of trade ``keep[j]``, ``2j + 1``: the seller's) in sending order, and each one's
    aggregator. Events go out in the order of the first part an aggregator has entries in, by
    key within it (as when each part's were added in turn); an event's entries in trade order."""
    keep = np.flatnonzero((b_own >= 0) | (s_own >= 0))
    side_owner = np.stack((b_own[keep], s_own[keep]), axis=1).ravel()
    entries = np.flatnonzero(side_owner >= 0)
    who = side_owner[entries]
    part = np.searchsorted(np.cumsum([len(p) for p in parts]), keep[entries >> 1], side="right")
    first = np.zeros(n_keys, dtype=np.int64)  # per aggregator, the first part it is in
    for i in reversed(range(len(parts))):
        first[who[part == i]] = i
    order = entries[np.argsort(first[who] * n_keys + who, kind="stable")]
    return keep, order, side_owner[order]


def _common(parts: list[TradeReport], keep: np.ndarray, time_str: str, seq: int) -> pa.Array:
    """Per kept trade, its entries' common part: trade id, time, price, energy and fees."""
    fee = arrow_text.floats(round8(_column(parts, "fee", np.float64)[keep]))
    return arrow_text.join(
        b'","trade_id":"00000000-0000-4000-9000-',
        arrow_text.fixed(hex12s(keep + seq)),
        f'","time":"{time_str}","trade_price":'.encode(),
        arrow_text.floats(round8(_column(parts, "price", np.float64)[keep])),
        b',"traded_energy":',
        arrow_text.floats(_column(parts, "energy", np.float64)[keep]),
        b',"total_fee":',
        fee,
        b',"local_market_fee":',
        fee,
    )


def _order_ids(parts: list[TradeReport], keep: np.ndarray) -> pa.Array:
    """Per kept trade, the end of its entries: bid, offer and residual ids."""
    part = np.repeat(np.arange(len(parts)), [len(p) for p in parts])[keep]
    prefix = arrow_text.texts([p.id_prefix.encode() for p in parts]).take(part)
    bid = _ids(prefix, _column(parts, "bid_seq", np.int64)[keep], b"market-maker-bid")
    offer = _ids(prefix, _column(parts, "offer_seq", np.int64)[keep], b"market-maker-offer")
    return arrow_text.join(
        b',"bid_id":"',
        bid,
        b'","offer_id":"',
        offer,
        b'","residual_bid_id":"',
        arrow_text.where(_column(parts, "bid_residual", bool)[keep], bid, b"None"),
        b'","residual_offer_id":"',
        arrow_text.where(_column(parts, "offer_residual", bool)[keep], offer, b"None"),
        b'"}',
    )


def _ids(prefix: pa.Array, seq: np.ndarray, market_maker: bytes) -> pa.Array:
    """Order ids: the prefix and the number in 12 hex digits (-1: the Market Maker's)."""
    ids = arrow_text.join(prefix, arrow_text.fixed(hex12s(np.maximum(seq, 0))))
    return arrow_text.where(seq >= 0, ids, market_maker)
