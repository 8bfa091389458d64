"""Trade events: each aggregator's side of the tick's trades, around its tree.

A slot end settles tens of thousands of trades in one tick; each side of a trade goes to its
asset's owner (the counterparty shown as ``anonymous``, as gsy-e does), and each aggregator gets
one ``trade`` event with its entries and the same tree as its tick event.

:func:`trade_rows` and :func:`trade_event` are the readable definition of those events;
:func:`trade_payloads` makes the same bytes in bulk, as the engine sends them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat

import numpy as np
import orjson

from gridfleet.simulator.grid import Grid
from gridfleet.simulator.numfmt import hex12, hex12b, hex12s, reprs, reprs_f64, round8
from gridfleet.simulator.state import TradeReport


def _js(x: str) -> str:
    return orjson.dumps(x).decode()


def trade_event(
    trade_list: list[bytes], tree: bytes, fit: float | None, mmr: float | None
) -> bytes:
    """A ``trade`` event; ``trade_list``: the pieces of its entries, serialised and
    comma-separated once joined (:func:`trade_rows`, joined per aggregator)."""
    return b"".join(
        [
            b'{"trade_list":[',
            *trade_list,
            b'],"grid_tree":',
            tree,
            b',"feed_in_tariff_rate":',
            orjson.dumps(fit),
            b',"market_maker_rate":',
            orjson.dumps(mmr),
            b',"event":"trade","simulation_id":null,"num_ticks":10.0}',
        ]
    )


def owner_array(grid: Grid, owner: dict[int, str]) -> tuple[np.ndarray, list[str]]:
    """Asset -> position of its owning aggregator in the returned key list (-1: nobody)."""
    keys = sorted(set(owner.values()))
    pos = {k: i for i, k in enumerate(keys)}
    arr = np.full(grid.n_assets + 1, -1, dtype=np.int64)  # the extra last slot: Market Maker
    for a, agg in owner.items():
        arr[a] = pos[agg]
    return arr, keys


def trade_rows(
    report: TradeReport,
    grid: Grid,
    owner: tuple[np.ndarray, list[str]],
    time_str: str,
    seq: int,
    name_js: list[str] | None = None,
) -> dict[str, list[str]]:
    """Serialised trade-list entries per aggregator key: each side of a trade goes to its
    asset's owner, the counterparty shown as ``anonymous`` (as gsy-e does).

    The readable definition (the engine sends :func:`trade_payloads`, the same bytes): the
    columns are prepared with numpy (owners, ids, which trades concern nobody) and one f-string
    per entry does the rest.
    ``owner`` comes from :func:`owner_array`; ``name_js`` are the asset names as JSON strings.
    """
    n = len(report)
    if n == 0:
        return {}
    own_arr, keys = owner
    buyer = np.asarray(report.buyer, dtype=np.int64)
    seller = np.asarray(report.seller, dtype=np.int64)
    b_own = own_arr[buyer]  # -1 (the Market Maker) reads the extra last slot: nobody
    s_own = own_arr[seller]
    keep = np.flatnonzero((b_own >= 0) | (s_own >= 0))
    if len(keep) == 0:
        return {}
    if name_js is None:
        name_js = [_js(x) for x in grid.asset_name]
    mm = _js(grid.market_maker_name)
    names = [*name_js, mm]  # index -1 is the Market Maker
    uuids = grid.asset_uuid
    bid_seq = np.asarray(report.bid_seq, dtype=np.int64)[keep]
    offer_seq = np.asarray(report.offer_seq, dtype=np.int64)[keep]
    res_b = np.asarray(report.bid_residual, dtype=bool)[keep].tolist()
    res_o = np.asarray(report.offer_residual, dtype=bool)[keep].tolist()
    # numbers and ids rendered in bulk, exactly as repr / round(x, 8) / :012x would
    energy = reprs(np.asarray(report.energy, dtype=np.float64)[keep].tolist())
    price = reprs(round8(np.asarray(report.price, dtype=np.float64)[keep]).tolist())
    fee = reprs(round8(np.asarray(report.fee, dtype=np.float64)[keep]).tolist())
    trade_ids = hex12(keep + seq)
    prefix = report.id_prefix
    bid_ids = [
        f"{prefix}{h}" if q >= 0 else "market-maker-bid"
        for h, q in zip(hex12(np.maximum(bid_seq, 0)), bid_seq.tolist(), strict=True)
    ]
    offer_ids = [
        f"{prefix}{h}" if q >= 0 else "market-maker-offer"
        for h, q in zip(hex12(np.maximum(offer_seq, 0)), offer_seq.tolist(), strict=True)
    ]
    cols = zip(
        buyer[keep].tolist(),
        seller[keep].tolist(),
        b_own[keep].tolist(),
        s_own[keep].tolist(),
        strict=True,
    )
    out: list[list[str]] = [[] for _ in keys]
    for j, (b, s, bo, so) in enumerate(cols):
        b_name, s_name = names[b], names[s]
        bid_id, offer_id, f = bid_ids[j], offer_ids[j], fee[j]
        common = (
            f'"trade_id":"00000000-0000-4000-9000-{trade_ids[j]}","time":"{time_str}",'
            f'"trade_price":{price[j]},"traded_energy":{energy[j]},"total_fee":{f},'
            f'"local_market_fee":{f}'
        )
        ids = (
            f'"seller_origin":{s_name},"buyer_origin":{b_name},"bid_id":"{bid_id}",'
            f'"offer_id":"{offer_id}","residual_bid_id":"{bid_id if res_b[j] else "None"}",'
            f'"residual_offer_id":"{offer_id if res_o[j] else "None"}"}}'
        )
        if bo >= 0:
            out[bo].append(
                f'{{"event":"trade","asset_id":"{uuids[b]}",{common},'
                f'"seller":"anonymous","buyer":{b_name},{ids}'
            )
        if so >= 0:
            out[so].append(
                f'{{"event":"trade","asset_id":"{uuids[s]}",{common},'
                f'"seller":{s_name},"buyer":"anonymous",{ids}'
            )
    return {keys[k]: rows for k, rows in enumerate(out) if rows}


# The pieces of one entry in trade_payloads' flat list: its opening up to the asset id (for an
# event's first entry the event's opening), asset id, the trade's common part (trade id to
# fees), the side's keys around the asset's name, seller and buyer names, order ids.
_W = 10
_OPEN = b'{"trade_list":[{"event":"trade","asset_id":"'
_ENTRY = [b',{"event":"trade","asset_id":"', *[b""] * 6, b',"buyer_origin":', b"", b""]
_SIDE_HEAD = np.array([b',"seller":"anonymous","buyer":', b',"seller":'], dtype=object)
_SIDE_TAIL = np.array(
    [b',"seller_origin":', b',"buyer":"anonymous","seller_origin":'], dtype=object
)


class AssetLabels:
    """A grid's asset uuids and names (the Market Maker's last) as bytes, encoded once."""

    def __init__(self, grid: Grid, name_js: list[str]) -> None:
        self.uuids = _encoded(grid.asset_uuid)
        self.names = _encoded([*name_js, _js(grid.market_maker_name)])  # -1: the Market Maker


def trade_payloads(
    parts: Sequence[TradeReport],
    labels: AssetLabels,
    owner: tuple[np.ndarray, list[str]],
    time_str: str,
    seq: int,
    tree: Callable[[str], bytes],
    rates: tuple[float | None, float | None],
) -> dict[str, bytes]:
    """Per aggregator key, in sending order, its ``trade`` event: the same bytes as
    :func:`trade_event` around the :func:`trade_rows` of each part (trade ids numbered on from
    ``seq``), an aggregator's entries of a part after those of the parts before; ``tree`` gives
    its tree, ``rates`` the feed-in tariff and Market Maker rates.

    A settling tick has ~40 000 trades: the columns are rendered in bulk, a trade's common part
    and its order ids joined once for both its sides, and every entry's pieces put in one flat
    list, grouped by aggregator; an aggregator's event is then one join of its slice.
    """
    parts = [p for p in parts if len(p)]
    if not parts:
        return {}
    own_arr, keys = owner
    buyer, seller = _column(parts, "buyer", np.int64), _column(parts, "seller", np.int64)
    keep, order, agg_of = _entries(parts, own_arr[buyer], own_arr[seller], len(keys))
    if not len(keep):
        return {}
    buyer, seller = buyer[keep], seller[keep]
    t, side = order >> 1, order & 1  # the entry's trade (in keep) and side (1: the seller's)
    asset = np.where(side == 1, seller[t], buyer[t])
    names = labels.names
    m = len(order)
    flat = _ENTRY * m
    flat[1::_W] = labels.uuids[asset].tolist()
    flat[2::_W] = _common(parts, keep, time_str, seq)[t].tolist()
    flat[3::_W] = _SIDE_HEAD[side].tolist()
    flat[4::_W] = names[asset].tolist()
    flat[5::_W] = _SIDE_TAIL[side].tolist()
    flat[6::_W] = names[seller[t]].tolist()
    flat[8::_W] = names[buyer[t]].tolist()
    flat[9::_W] = _order_ids(parts, keep)[t].tolist()
    close = b"".join(
        [
            b',"feed_in_tariff_rate":',
            orjson.dumps(rates[0]),
            b',"market_maker_rate":',
            orjson.dumps(rates[1]),
            b',"event":"trade","simulation_id":null,"num_ticks":10.0}',
        ]
    )
    cuts = (np.flatnonzero(np.diff(agg_of)) + 1).tolist()
    out: dict[str, bytes] = {}
    for k, lo, hi in zip(agg_of[[0, *cuts]].tolist(), [0, *cuts], [*cuts, m], strict=True):
        agg = keys[k]
        pieces = flat[lo * _W : hi * _W]
        pieces[0] = _OPEN
        pieces += (b'],"grid_tree":', tree(agg), close)
        out[agg] = b"".join(pieces)
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


def _common(parts: list[TradeReport], keep: np.ndarray, time_str: str, seq: int) -> np.ndarray:
    """Per kept trade, its entries' common part: trade id, time, price, energy and fees."""
    fee = reprs_f64(round8(_column(parts, "fee", np.float64)[keep]))
    return np.array(
        _joined(
            b'","trade_id":"00000000-0000-4000-9000-',
            hex12b(keep + seq),
            f'","time":"{time_str}","trade_price":'.encode(),
            reprs_f64(round8(_column(parts, "price", np.float64)[keep])),
            b',"traded_energy":',
            reprs_f64(_column(parts, "energy", np.float64)[keep]),
            b',"total_fee":',
            fee,
            b',"local_market_fee":',
            fee,
        ),
        dtype=object,
    )


def _order_ids(parts: list[TradeReport], keep: np.ndarray) -> np.ndarray:
    """Per kept trade, the end of its entries: bid, offer and residual ids."""
    bid = np.concatenate([_ids(p.bid_seq, p.id_prefix, b"market-maker-bid") for p in parts])
    offer = np.concatenate([_ids(p.offer_seq, p.id_prefix, b"market-maker-offer") for p in parts])
    bid, offer = bid[keep], offer[keep]
    return _rows(
        [
            b',"bid_id":"',
            bid,
            b'","offer_id":"',
            offer,
            b'","residual_bid_id":"',
            np.where(_column(parts, "bid_residual", bool)[keep], bid, b"None"),
            b'","residual_offer_id":"',
            np.where(_column(parts, "offer_residual", bool)[keep], offer, b"None"),
            b'"}',
        ]
    )


def _ids(seq: np.ndarray, prefix: str, market_maker: bytes) -> np.ndarray:
    """Order ids as an ``S`` array: the prefix and the number in 12 hex digits (-1: the
    Market Maker's)."""
    seq = np.asarray(seq, dtype=np.int64)
    head = np.frombuffer(prefix.encode(), dtype=np.uint8)
    ids = np.empty((len(seq), len(head) + 12), dtype=np.uint8)
    ids[:, : len(head)] = head
    ids[:, len(head) :] = hex12s(np.maximum(seq, 0)).view(np.uint8).reshape(-1, 12)
    return np.where(seq >= 0, ids.view(f"S{ids.shape[1]}").ravel(), market_maker)


def _rows(fields: list[bytes | np.ndarray]) -> np.ndarray:
    """Per row, its fields joined: a ``bytes`` field is the same in every row, an ``S`` array
    holds each row's own (none ends in a NUL byte). Rows whose fields have the same lengths are
    laid out together, one numpy copy per field, instead of one join per row."""
    cols = [(f, np.char.str_len(f)) for f in fields if isinstance(f, np.ndarray)]
    key = np.zeros(len(cols[0][0]), dtype=np.int64)
    for f, length in cols:  # all lengths in one number (fields of a few dozen bytes)
        key = key * (f.itemsize + 1) + length
    order = np.argsort(key, kind="stable")
    out = np.empty(len(key), dtype=object)
    for rows in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        widths = iter([int(length[rows[0]]) for _, length in cols])
        pieces = [
            np.frombuffer(f, dtype=np.uint8)
            if isinstance(f, bytes)
            else f[rows].view(np.uint8).reshape(len(rows), f.itemsize)[:, : next(widths)]
            for f in fields
        ]
        mat = np.empty((len(rows), sum(p.shape[-1] for p in pieces)), dtype=np.uint8)
        at = 0
        for p in pieces:
            mat[:, at : at + p.shape[-1]] = p
            at += p.shape[-1]
        out[rows] = mat.view(f"S{at}").ravel().tolist()
    return out


def _joined(*cols: bytes | list[bytes]) -> list[bytes]:
    """Per row, each column's piece joined (a ``bytes`` column repeats)."""
    pieces = [repeat(c) if isinstance(c, bytes) else c for c in cols]
    return list(map(b"".join, zip(*pieces, strict=False)))  # the repeats never end


def _encoded(texts: list[str]) -> np.ndarray:
    """The texts UTF-8 encoded, as an object array (to pick pieces in bulk)."""
    return np.array(list(map(str.encode, texts)), dtype=object)
