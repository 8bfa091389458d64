"""Per-market DSO statistics for one slot, computed from that slot's trades in one numpy pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gridfleet.simulator.matching import Trades, path_rows


@dataclass
class MarketStats:
    """Columns over markets. Rates are NaN where a market saw no trade."""

    min_rate: np.ndarray
    avg_rate: np.ndarray
    median_rate: np.ndarray
    max_rate: np.ndarray
    volume: np.ndarray  # kWh of trades cleared in or passing through the market
    imported: np.ndarray  # kWh bought inside the market's subtree from outside it
    exported: np.ndarray  # kWh sold from inside the subtree to outside it
    consumed: np.ndarray  # kWh bought by assets inside the subtree
    fee_revenue: np.ndarray  # ct earned by this market's grid fee

    @classmethod
    def empty(cls, n_markets: int) -> MarketStats:
        nan = np.full(n_markets, np.nan)
        z = np.zeros(n_markets)
        return cls(
            nan, nan.copy(), nan.copy(), nan.copy(), z, z.copy(), z.copy(), z.copy(), z.copy()
        )

    def self_sufficiency(self, market: int) -> float | None:
        """Share of the subtree's consumption bought inside it; None without consumption."""
        c = self.consumed[market]
        return None if c <= 0 else float(max(0.0, (c - self.imported[market]) / c))

    def last_market_stats(self, market: int) -> dict[str, Any]:
        """The five-field form gsy-e puts on market nodes of the grid tree."""
        if np.isnan(self.avg_rate[market]):
            return {
                "min_trade_rate": None,
                "max_trade_rate": None,
                "avg_trade_rate": None,
                "median_trade_rate": None,
                "total_traded_energy_kWh": None,
            }
        return {
            "min_trade_rate": round(float(self.min_rate[market]), 8),
            "max_trade_rate": round(float(self.max_rate[market]), 8),
            "avg_trade_rate": round(float(self.avg_rate[market]), 8),
            "median_trade_rate": round(float(self.median_rate[market]), 8),
            "total_traded_energy_kWh": round(float(self.volume[market]), 8),
        }

    def dso_market_stats(self, market: int) -> dict[str, Any]:
        """The extended form answered to ``dso_market_stats``."""
        s = self.last_market_stats(market)
        traded = s["total_traded_energy_kWh"] is not None
        return {
            **s,
            "market_bill": {"Accumulated Trades": {}},
            "market_fee_revenue": round(float(self.fee_revenue[market]), 8) if traded else 0,
            "area_throughput": {
                "import": round(float(self.imported[market]), 8),
                "export": round(float(self.exported[market]), 8),
            },
            "self_sufficiency": self.self_sufficiency(market),
            "self_consumption": None,
            "market_energy_deviance": None,
        }


def compute_stats(
    trades: Trades,
    market_parent: np.ndarray,
    fee_rate: np.ndarray,
    mm_offer: int | None = None,
    mm_bid: int | None = None,
) -> MarketStats:
    """Statistics per market for a set of trades (usually one slot's).

    ``mm_offer``/``mm_bid`` are the Market Maker's order indices: the Market Maker stands for the
    world outside the grid, so what it sells counts as the root's import, what it buys as export.
    """
    n = len(market_parent)
    st = MarketStats.empty(n)
    if len(trades) == 0:
        return st
    t, m, role = path_rows(trades, market_parent)
    q = trades.energy[t]
    r = trades.rate[t]
    st.volume = np.bincount(m, weights=q, minlength=n)
    st.imported = np.bincount(m[role == 1], weights=q[role == 1], minlength=n)
    st.exported = np.bincount(m[role == 2], weights=q[role == 2], minlength=n)
    st.fee_revenue = np.bincount(m, weights=fee_rate[m] * q, minlength=n)
    # consumption of a subtree: what its buyers bought = import + energy bought inside it
    buyer_inside = (role == 0) | (role == 1)
    st.consumed = np.bincount(m[buyer_inside], weights=q[buyer_inside], minlength=n)
    if mm_offer is not None:
        st.imported[0] += trades.energy[trades.offer == mm_offer].sum()
        st.exported[0] += trades.energy[trades.bid == mm_bid].sum()
    has = st.volume > 0
    st.avg_rate = np.where(
        has, np.bincount(m, weights=r * q, minlength=n) / np.where(has, st.volume, 1), np.nan
    )
    order = np.lexsort((r, m))
    ms, rs = m[order], r[order]
    first = np.flatnonzero(np.r_[True, ms[1:] != ms[:-1]])
    last = np.r_[first[1:], len(ms)] - 1
    markets = ms[first]
    st.min_rate[markets] = rs[first]
    st.max_rate[markets] = rs[last]
    lo = first + (last - first) // 2
    hi = first + (last - first + 1) // 2
    st.median_rate[markets] = (rs[lo] + rs[hi]) / 2
    return st
