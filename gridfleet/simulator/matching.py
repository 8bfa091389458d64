"""Two-sided pay-as-bid matching over the market tree, vectorised with numpy.

The model (documented in docs/simulator.md):

- Every order sits in the market of its asset (the house). Matching runs level by level, from
  the deepest markets up to the root: all markets of one depth are matched in one numpy pass.
- Whatever is left of an order after its market is matched moves up to the parent market and
  pays that market's grid fee on the way: a bid's effective rate drops by the fee, an offer's
  rises by it. So a market sees the orders of its own assets and the leftovers of its children.
- In market ``m`` a bid and an offer match when ``bid_eff - fee[m] >= offer_eff``; best bid
  against cheapest offer first. The buyer pays its own bid rate (pay as bid); the fees of every
  market on the path are taken out; the seller gets the rest, which is at least its offer rate.
- The Market Maker sits at the root: an unlimited offer at ``market_maker_rate`` and an
  unlimited bid at ``feed_in_tariff_rate``.

Conservation: every trade is one (bid, offer, energy) triple, so energy sold equals energy
bought, and for every trade ``buyer pays = seller receives + sum of fees``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS_KWH = 1e-9  # leftovers below this are dust, not orders


@dataclass
class OrderBook:
    """Open orders as columns. ``market`` is the market the order's asset sits in."""

    market: np.ndarray  # int32
    is_bid: np.ndarray  # bool
    rate: np.ndarray  # ct/kWh the owner asked for
    energy: np.ndarray  # kWh

    def __len__(self) -> int:
        return len(self.market)


@dataclass
class Trades:
    """Matched trades as columns. ``bid``/``offer`` index the book; the Market Maker's orders
    are ``len(book)`` (its offer) and ``len(book) + 1`` (its bid)."""

    bid: np.ndarray
    offer: np.ndarray
    energy: np.ndarray  # kWh
    market: np.ndarray  # market where the trade cleared
    rate: np.ndarray  # ct/kWh paid by the buyer
    fee_rate: np.ndarray  # ct/kWh of grid fees along the path
    bid_origin: np.ndarray  # market of the buyer
    offer_origin: np.ndarray  # market of the seller

    def __len__(self) -> int:
        return len(self.bid)

    @property
    def seller_rate(self) -> np.ndarray:
        return self.rate - self.fee_rate


def _empty_trades() -> Trades:
    i = np.zeros(0, dtype=np.int64)
    f = np.zeros(0)
    return Trades(i, i, f, i, f, f, i, i)


def match_groups(
    group: np.ndarray, is_bid: np.ndarray, key: np.ndarray, energy: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy two-sided matching inside every group at once.

    Bids sorted by key descending, offers ascending, per group; both are laid on one number
    line where group ``g`` owns ``[S_g, S_g + min(bids_g, offers_g)]``. Every interval between
    two consecutive cumulative-energy breakpoints is one (bid, offer) pair. Because bids fall
    and offers rise along a group, ``bid_key >= offer_key`` holds on a prefix of each group,
    so a plain filter keeps exactly the greedy matches.

    Returns (bid positions, offer positions, energy) with positions into the input arrays.
    """
    bids = np.flatnonzero(is_bid & (energy > EPS_KWH))
    offers = np.flatnonzero(~is_bid & (energy > EPS_KWH))
    if len(bids) == 0 or len(offers) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0)
    # Ties in rate go to the larger order first (fewer partial fills; also what the probe
    # capture shows: a 0.75 kWh storage offer beat a 0.125 kWh PV offer at the same rate).
    # the group as the narrowest int it fits (a market index): numpy sorts 16-bit ints by radix
    g_sort = group.astype(np.int16) if n_groups <= np.iinfo(np.int16).max else group
    bids = bids[np.lexsort((-energy[bids], -key[bids], g_sort[bids]))]
    offers = offers[np.lexsort((-energy[offers], key[offers], g_sort[offers]))]
    total_b = np.bincount(group[bids], weights=energy[bids], minlength=n_groups)
    total_o = np.bincount(group[offers], weights=energy[offers], minlength=n_groups)
    span = np.minimum(total_b, total_o)
    start = np.concatenate(([0.0], np.cumsum(span)[:-1]))

    def ends(idx: np.ndarray) -> np.ndarray:
        g = group[idx]
        cum = np.cumsum(energy[idx])
        # cumulative energy inside each group: subtract the running total before the group
        first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        before = np.repeat(cum[first] - energy[idx][first], np.diff(np.r_[first, len(idx)]))
        return start[g] + np.minimum(cum - before, span[g])

    b_end, o_end = ends(bids), ends(offers)
    points = np.unique(np.concatenate((b_end, o_end)))
    lo = np.concatenate(([0.0], points[:-1]))
    qty = points - lo
    keep = qty > 1e-12
    lo, qty = lo[keep], qty[keep]
    mid = lo + qty / 2
    bi = np.searchsorted(b_end, mid, side="right")
    oi = np.searchsorted(o_end, mid, side="right")
    ok = (bi < len(bids)) & (oi < len(offers))
    bi, oi, qty = bi[ok], oi[ok], qty[ok]
    b_pos, o_pos = bids[bi], offers[oi]
    ok = (group[b_pos] == group[o_pos]) & (key[b_pos] >= key[o_pos] - 1e-9)
    return b_pos[ok], o_pos[ok], qty[ok]


def match(
    book: OrderBook,
    market_parent: np.ndarray,
    market_depth: np.ndarray,
    fee_rate: np.ndarray,
    market_maker_rate: float,
    feed_in_tariff_rate: float,
    *,
    market_maker: bool = True,
) -> Trades:
    """Match ``book`` over the whole tree; the Market Maker trades at the root (index 0).

    ``market_maker=False`` (settlement markets): its two orders stay in the book, at rates
    nothing can match (an offer at +inf, a bid at -inf), so the indices keep their meaning.
    """
    if not market_maker:
        market_maker_rate, feed_in_tariff_rate = math.inf, -math.inf
    n_markets = len(market_parent)
    # The Market Maker's two unlimited orders, appended at the root.
    big = float(book.energy.sum()) + 1.0
    market = np.concatenate((book.market.astype(np.int64), [0, 0]))
    is_bid = np.concatenate((book.is_bid.astype(bool), [False, True]))
    rate = np.concatenate((book.rate.astype(np.float64), [market_maker_rate, feed_in_tariff_rate]))
    left = np.concatenate((book.energy.astype(np.float64), [big, big]))
    origin = market.copy()
    eff = rate.copy()
    pos = market.copy()
    parts: list[tuple[np.ndarray, ...]] = []
    for depth in range(int(market_depth.max()) if n_markets else 0, -1, -1):
        here = np.flatnonzero((market_depth[pos] == depth) & (left > EPS_KWH))
        if len(here) == 0:
            continue
        g = pos[here]
        key = np.where(is_bid[here], eff[here] - fee_rate[g], eff[here])
        bp, op, q = match_groups(g, is_bid[here], key, left[here], n_markets)
        if len(q):
            b, o = here[bp], here[op]
            m = pos[b]
            fees = (rate[b] - eff[b]) + fee_rate[m] + (eff[o] - rate[o])
            parts.append((b, o, q, m, rate[b].copy(), fees))
            np.subtract.at(left, b, q)
            np.subtract.at(left, o, q)
            left[left < EPS_KWH] = 0.0
        if depth == 0:
            break
        # Leftovers climb one market and pay the fee of the market they leave.
        up = here[left[here] > EPS_KWH]
        f = fee_rate[pos[up]]
        eff[up] = np.where(is_bid[up], eff[up] - f, eff[up] + f)
        pos[up] = market_parent[pos[up]]
    if not parts:
        return _empty_trades()
    b, o, q, m, r, fr = (np.concatenate(c) for c in zip(*parts, strict=True))
    return Trades(b, o, q, m, r, fr, origin[b], origin[o])


def path_rows(
    trades: Trades, market_parent: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (trade, market, role) where energy of a trade passes a market.

    role 0: the market where the trade cleared; 1: a market on the buyer's side below it
    (energy imported into that market); 2: a market on the seller's side (energy exported).
    """
    t_all = [np.arange(len(trades))]
    m_all = [trades.market]
    r_all = [np.zeros(len(trades), dtype=np.int8)]
    for origin, role in ((trades.bid_origin, 1), (trades.offer_origin, 2)):
        cur = origin.copy()
        idx = np.arange(len(trades))
        while True:
            walking = cur != trades.market[idx]
            idx, cur = idx[walking], cur[walking]
            if len(idx) == 0:
                break
            t_all.append(idx)
            m_all.append(cur)
            r_all.append(np.full(len(idx), role, dtype=np.int8))
            cur = market_parent[cur].astype(np.int64)
    return np.concatenate(t_all), np.concatenate(m_all), np.concatenate(r_all)


def fee_revenue(trades: Trades, market_parent: np.ndarray, fee_rate: np.ndarray) -> np.ndarray:
    """Grid-fee revenue per market (ct) for these trades; sums to ``(fee_rate * energy).sum()``."""
    t, m, _ = path_rows(trades, market_parent)
    return np.bincount(m, weights=fee_rate[m] * trades.energy[t], minlength=len(market_parent))
