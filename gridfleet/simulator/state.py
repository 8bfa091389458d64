"""The exchange's market state: asset energy per slot, open orders, fees, trades and stats.

One :class:`ExchangeState` is owned by the engine thread; nothing here does I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

# The exchange's rules, defined once (gridfleet.strategies.rules); named here for simulator.batch.
from gridfleet.exchange.rules import MIN_ORDER_ENERGY_KWH as MIN_ENERGY_KWH
from gridfleet.exchange.rules import OFFER_TOLERANCE_KWH  # noqa: F401
from gridfleet.simulator import profiles
from gridfleet.simulator.grid import LOAD, PV, Grid, Kind
from gridfleet.simulator.matching import EPS_KWH, OrderBook, Trades, match
from gridfleet.simulator.settlement import ORDER_ID_PREFIX as SETTLEMENT_ORDER_ID_PREFIX
from gridfleet.simulator.settlement import SettlementMarkets
from gridfleet.simulator.stats import MarketStats, compute_stats

MARKET_SLOT_FORMAT = "%Y-%m-%dT%H:%M"
SPOT_ORDER_ID_PREFIX = "00000000-0000-4000-8000-"
# Events report energies rounded to 8 decimals; a bid of exactly the reported amount may then be
# up to half a unit of the 8th decimal above the exact room. gsy-e reports unrounded floats, so it
# needs no slack; this exchange allows exactly what its own rounding adds, nothing more.
REPORT_ROUNDING_KWH = 5e-9


@dataclass
class TradeReport:
    """One tick's trades, ready for the trade events: parallel arrays, one row per trade."""

    buyer: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # -1: MM
    seller: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    energy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    price: np.ndarray = field(default_factory=lambda: np.zeros(0))  # ct paid by the buyer
    fee: np.ndarray = field(default_factory=lambda: np.zeros(0))  # ct of grid fees
    # order id numbers (``ExchangeState.order_id``); -1 for the Market Maker's orders
    bid_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    offer_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    bid_residual: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    offer_residual: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # order ids are this prefix and the order number in 12 hex digits
    id_prefix: str = SPOT_ORDER_ID_PREFIX

    def __len__(self) -> int:
        return len(self.buyer)


class ExchangeState:
    """Market state of one simulation."""

    def __init__(
        self,
        grid: Grid,
        slot_length: timedelta,
        start: datetime,
        settlement: SettlementMarkets | None = None,
    ) -> None:
        self.grid = grid
        self.settlement = settlement  # None: no settlement markets in this run
        self.slot_length = slot_length
        self.slot_hours = slot_length.total_seconds() / 3600.0
        self.start = start
        n = grid.n_assets
        self.slot_index = -1
        self.slot_start = start
        self.market_slot = start.strftime(MARKET_SLOT_FORMAT)
        self._time_slot = start.strftime("%Y-%m-%dT%H:%M:%S")
        self.demand = np.zeros(n)  # load requirement / PV production of the open slot (kWh)
        self.bought = np.zeros(n)
        self.sold = np.zeros(n)
        self.cost = np.zeros(n)  # ct paid minus ct earned this slot
        self.active_bid = np.zeros(n)
        self.active_offer = np.zeros(n)
        self.used = grid.storage_initial_soc * grid.storage_capacity_kwh
        self.buy_limit = np.zeros(n)
        self.sell_limit = np.zeros(n)
        self.last_traded = np.zeros(n)
        self.last_cost = np.zeros(n)
        self.o_asset = np.zeros(0, dtype=np.int64)
        self.o_bid = np.zeros(0, dtype=bool)
        self.o_energy = np.zeros(0, dtype=np.float64)
        self.o_rate = np.zeros(0, dtype=np.float64)
        self.o_alive = np.zeros(0, dtype=bool)
        self.n_rows = 0
        self._seq_base = 0
        self.o_prev = np.zeros(0, dtype=np.int64)
        self.head_bid = np.full(n, -1, dtype=np.int64)
        self.head_offer = np.full(n, -1, dtype=np.int64)
        self.fee_const = np.array([m.fee_const for m in grid.markets], dtype=np.float64)
        self.fee_percent = np.array(
            [np.nan if m.fee_percent is None else m.fee_percent for m in grid.markets],
            dtype=np.float64,
        )
        self.fee_changed = False
        # gsy-e fixes a market's fee when it opens; a grid_fees command changes the area's fee
        # (fee_const, fee_percent) and takes effect with the next slot's market.
        self.market_fee = self.fee_rates()  # ct/kWh per market of the open slot, fixed at open
        self.last_fee = self.fee_rates()  # the fee of the last closed market (last_market_fee)
        self.stats = MarketStats.empty(len(grid.markets))
        self.market_parent = grid.market_parent_array()
        self.market_depth = grid.market_depth_array()
        self._slot_trades: list[Trades] = []
        self._order_seq = 0
        self.forecast: dict[tuple[int, str], float] = {}
        self.measurement: dict[tuple[int, str], float] = {}
        self.total_trades = 0
        self.total_energy = 0.0
        # JSON fragments for the buyer/seller part of rendered orders, built once.
        self._party = [
            json.dumps({"name": nm, "origin": nm, "origin_uuid": u, "uuid": u})
            for nm, u in zip(grid.asset_name, grid.asset_uuid, strict=True)
        ]

    # ------------------------------------------------------------------ slots

    def fee_rates(self) -> np.ndarray:
        """ct/kWh per market, the AREA's fee now: the constant fee plus the percent fee of the
        market maker rate. It is the tree's ``current_market_fee`` (gsy-e's
        ``area.get_grid_fee()``) and the fee of the next slot's market; orders of the open slot
        pay :attr:`market_fee`."""
        pct = np.nan_to_num(self.fee_percent) / 100.0 * self.grid.market_maker_rate
        return self.fee_const + pct

    def slot_label(self, index: int) -> str:
        return (self.start + index * self.slot_length).strftime(MARKET_SLOT_FORMAT)

    def open_slot(self, index: int) -> None:
        """Start market slot ``index``: fresh energies and limits, no orders; the slot's market
        takes the area's fee now (gsy-e's ``AreaMarkets._create_market``). With settlement
        markets on, the slot that ended gets its settlement market first."""
        new_start = self.start + index * self.slot_length
        if self.settlement is not None and self.slot_index >= 0:
            self.settlement.cycle(
                self.slot_index, self.slot_start, self.bought, self.sold, self.demand, new_start
            )
        self.slot_index = index
        self.market_fee = self.fee_rates()
        self.slot_start = self.start + index * self.slot_length
        self.market_slot = self.slot_start.strftime(MARKET_SLOT_FORMAT)
        self._time_slot = self.slot_start.strftime("%Y-%m-%dT%H:%M:%S")
        hour = self.slot_start.hour + self.slot_start.minute / 60.0
        self.demand = profiles.slot_energy(self.grid, hour, self.slot_hours)
        for (asset, slot), kwh in self.forecast.items():
            if slot == self.market_slot:
                self.demand[asset] = kwh
        self.bought[:] = 0.0
        self.sold[:] = 0.0
        self.cost[:] = 0.0
        self.active_bid[:] = 0.0
        self.active_offer[:] = 0.0
        self.buy_limit, self.sell_limit = profiles.storage_limits(
            self.grid, self.used, self.slot_hours
        )
        self._reset_orders()
        self._slot_trades = []

    def close_slot(self) -> None:
        """End the open slot: its trades become the markets' last statistics."""
        trades = _concat(self._slot_trades)
        self.stats = compute_stats(
            trades, self.market_parent, self.market_fee, mm_offer=-1, mm_bid=-2
        )
        self.last_traded = self.bought + self.sold
        self.last_cost = self.cost.copy()
        # gsy-e's last_market_fee: area.current_market (the last PAST market)'s fee_class rate.
        self.last_fee = self.market_fee.copy()

    # ------------------------------------------------------------------ per-asset figures

    def requirement(self, a: int) -> float:
        return max(0.0, float(self.demand[a] - self.bought[a]))

    def available(self, a: int) -> float:
        return max(0.0, float(self.demand[a] - self.sold[a]))

    def to_buy(self, a: int) -> float:
        return max(0.0, float(self.buy_limit[a] - self.bought[a] - self.active_bid[a]))

    def to_sell(self, a: int) -> float:
        return max(0.0, float(self.sell_limit[a] - self.sold[a] - self.active_offer[a]))

    def tradeable(self) -> np.ndarray:
        """Per asset: could an order of it be accepted now? A load with a requirement, a PV with
        energy available, a storage with room to buy or to sell, above the exchange's 2e-5 kWh
        floor (as the events report them: rounded to 8 decimals)."""
        kind = self.grid.kind
        buy = np.round(np.maximum(0.0, self.demand - self.bought), 8)
        sell = np.round(np.maximum(0.0, self.demand - self.sold), 8)
        s_buy = np.round(np.maximum(0.0, self.buy_limit - self.bought - self.active_bid), 8)
        s_sell = np.round(np.maximum(0.0, self.sell_limit - self.sold - self.active_offer), 8)
        floor = MIN_ENERGY_KWH
        spot = np.where(
            kind == LOAD,
            buy > floor,
            np.where(kind == PV, sell > floor, (s_buy > floor) | (s_sell > floor)),
        )
        if self.settlement is not None:
            spot |= self.settlement.uncovered_any()
        return spot

    def asset_info(self, a: int) -> dict[str, Any]:
        """The ``asset_info`` / ``device_info`` dict of one asset, as gsy-e shapes it per kind."""
        kind = self.grid.kind_list[a]
        traded = round(float(self.bought[a] + self.sold[a]), 8)
        cost = round(float(self.cost[a]), 8)
        head: dict[str, Any] = {}
        if self.settlement is not None and kind in (LOAD, PV):
            head["unsettled_deviation_kWh"] = self.settlement.info(a)
        if kind == LOAD:
            return {
                **head,
                "energy_requirement_kWh": round(self.requirement(a), 8),
                "energy_active_in_bids": round(float(self.active_bid[a]), 8),
                "energy_traded": traded,
                "total_cost": cost,
            }
        if kind == PV:
            return {
                **head,
                "available_energy_kWh": round(self.available(a), 8),
                "energy_active_in_offers": round(float(self.active_offer[a]), 8),
                "energy_traded": traded,
                "total_cost": cost,
            }
        cap = float(self.grid.storage_capacity_kwh[a])
        return {
            "energy_to_sell": round(self.to_sell(a), 8),
            "energy_active_in_bids": round(float(self.active_bid[a]), 8),
            "energy_to_buy": round(self.to_buy(a), 8),
            "energy_active_in_offers": round(float(self.active_offer[a]), 8),
            "free_storage": round(cap - float(self.used[a]), 8),
            "used_storage": round(float(self.used[a]), 8),
            "energy_traded": traded,
            "total_cost": cost,
        }

    # ------------------------------------------------------------------ orders
    #
    # Orders are rows of column arrays (``o_asset``, ``o_bid``, ``o_energy``, ``o_rate``,
    # ``o_alive``, ``o_prev``), appended in creation order and reset at every slot; the order
    # id is derived from the row (``_seq_base + row + 1``). Each asset's bids (and offers) form
    # a chain: ``head_bid[a]`` is its newest bid row, ``o_prev[row]`` the one placed before it
    # (-1: none; an order that replaced the side starts a new chain). Chains may hold rows that
    # died (matched, deleted), so readers filter on ``o_alive``. Invariant: ``active_bid[a]`` is
    # the left-to-right sum of the open energies of ``a``'s live bids, oldest first (likewise
    # offers).

    _COLUMNS = ("o_asset", "o_bid", "o_energy", "o_rate", "o_alive", "o_prev")

    @property
    def time_slot(self) -> str:
        """The open slot as orders render it (``YYYY-MM-DDTHH:MM:SS``)."""
        return self._time_slot

    @property
    def seq_base(self) -> int:
        """Row ``r`` of the open slot is order number ``seq_base + r + 1``."""
        return self._seq_base

    def party(self, a: int) -> str:
        """The buyer/seller part of asset ``a``'s rendered orders (a JSON object)."""
        return self._party[a]

    def _reset_orders(self) -> None:
        self._seq_base = self._order_seq
        self.n_rows = 0
        if len(self.o_alive):
            self.o_alive[:] = False
        self.head_bid[:] = -1
        self.head_offer[:] = -1

    def reserve(self, upto: int) -> None:
        """Make rows ``< upto`` exist (unwritten rows stay dead until written)."""
        if upto > len(self.o_alive):
            cap = max(upto, 2 * len(self.o_alive), 1024)
            for name in self._COLUMNS:
                old = getattr(self, name)
                new = np.zeros(cap, dtype=old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)
        self.n_rows = max(self.n_rows, upto)
        self._order_seq = self._seq_base + self.n_rows

    def order_id(self, row: int) -> str:
        # uuid-shaped and unique, but ~10x cheaper than uuid4() at 100 000 orders per tick
        return f"{SPOT_ORDER_ID_PREFIX}{self._seq_base + row + 1:012x}"

    def order_json(
        self,
        a: int,
        is_bid: bool,
        oid: str,
        energy: float,
        rate: float,
        price: float | int,
        creation_time: str,
        time_slot: str | None = None,
    ) -> str:
        """gsy-e's rendering of an order (json.dumps with ", " and ": "), formatted directly;
        ``time_slot``: the market's slot as the order shows it (default: the open spot slot)."""
        return (
            f'{{"type": "{"Bid" if is_bid else "Offer"}", "id": "{oid}", "energy": {energy!r}, '
            f'"energy_rate": {round(rate, 8)!r}, "price": {round(price, 8)!r}, '
            f'"original_price": {price!r}, "creation_time": "{creation_time}", '
            f'"time_slot": "{time_slot or self._time_slot}", '
            f'"{"buyer" if is_bid else "seller"}": {self._party[a]}}}'
        )

    def add_order(
        self, a: int, is_bid: bool, energy: float, price: float | int, creation_time: str
    ) -> str:
        """Place an already validated order; returns its JSON rendering (as in responses)."""
        rate = price / energy
        row = self.n_rows
        self.reserve(row + 1)
        head = self.head_bid if is_bid else self.head_offer
        self.o_asset[row], self.o_bid[row], self.o_energy[row] = a, is_bid, energy
        self.o_rate[row], self.o_alive[row], self.o_prev[row] = rate, True, head[a]
        head[a] = row
        if is_bid:
            self.active_bid[a] += energy
        else:
            self.active_offer[a] += energy
        return self.order_json(a, is_bid, self.order_id(row), energy, rate, price, creation_time)

    def write_orders(
        self,
        rows: np.ndarray,
        assets: np.ndarray,
        is_bid: np.ndarray,
        energy: np.ndarray,
        rate: np.ndarray,
        replace: np.ndarray,
    ) -> None:
        """Bulk :meth:`add_order` (after deleting the side's orders where ``replace``) for
        validated orders at reserved ``rows``, at most one per asset and side, of assets no
        other write since the last :meth:`reserve` touched."""
        if not len(rows):
            return
        self.o_asset[rows], self.o_bid[rows], self.o_energy[rows] = assets, is_bid, energy
        self.o_rate[rows] = rate
        self.o_alive[rows] = True
        for side, head, active in (
            (is_bid, self.head_bid, self.active_bid),
            (~is_bid, self.head_offer, self.active_offer),
        ):
            a = assets[side]
            rep = replace[side]
            prev = head[a]
            # replaced: every earlier order of the side dies, the side's sum is 0 + e
            cur = prev[rep]
            while len(cur := cur[cur >= 0]):
                self.o_alive[cur] = False
                cur = self.o_prev[cur]
            self.o_prev[rows[side]] = np.where(rep, -1, prev)
            head[a] = rows[side]
            e = energy[side]
            active[a[rep]] = e[rep]
            active[a[~rep]] += e[~rep]

    def live_rows(self, a: int, is_bid: bool) -> list[int]:
        """The asset's live bid (or offer) rows, oldest first."""
        out = []
        r = int((self.head_bid if is_bid else self.head_offer)[a])
        alive, prev = self.o_alive, self.o_prev
        while r >= 0:
            if alive[r]:
                out.append(r)
            r = int(prev[r])
        out.reverse()
        return out

    def delete_orders(self, a: int, is_bid: bool, order_id: str | None = None) -> list[str]:
        """Delete the asset's bids (or offers), all of them or only ``order_id``."""
        rows = self.live_rows(a, is_bid)
        gone_rows = [r for r in rows if order_id is None or self.order_id(r) == order_id]
        if not gone_rows:
            return []
        self.o_alive[gone_rows] = False
        self._recount(a)
        return [self.order_id(r) for r in gone_rows]

    def list_orders(self, a: int, is_bid: bool) -> list[tuple[str, float, float]]:
        """(id, rate, open energy) of the asset's live bids (or offers), oldest first."""
        return [
            (self.order_id(r), float(self.o_rate[r]), float(self.o_energy[r]))
            for r in self.live_rows(a, is_bid)
        ]

    def _recount(self, a: int) -> None:
        self.active_bid[a] = sum(float(self.o_energy[r]) for r in self.live_rows(a, True))
        self.active_offer[a] = sum(float(self.o_energy[r]) for r in self.live_rows(a, False))

    def set_energy(self, a: int, slot: str, kwh: float, measurement: bool = False) -> None:
        """A forecast (or measurement) for ``slot``; a forecast for the open slot applies now."""
        (self.measurement if measurement else self.forecast)[(a, slot)] = kwh
        if not measurement and slot == self.market_slot:
            self.demand[a] = kwh
        if self.settlement is not None:
            if measurement:
                self.settlement.set_measurement(a, slot, kwh)
            else:
                self.settlement.set_forecast(a)

    def match_settlement(self) -> TradeReport:
        """Match the open settlement markets once (see :mod:`~gridfleet.simulator.settlement`)."""
        if self.settlement is None:
            return TradeReport()
        t = self.settlement.match_tick(self.market_parent, self.market_depth, self.market_fee)
        if t is None:
            return TradeReport()
        return TradeReport(
            buyer=t.buyer,
            seller=t.seller,
            energy=t.energy,
            price=t.price,
            fee=t.fee,
            bid_seq=t.bid_seq,
            offer_seq=t.offer_seq,
            bid_residual=t.bid_residual,
            offer_residual=t.offer_residual,
            id_prefix=SETTLEMENT_ORDER_ID_PREFIX,
        )

    # ------------------------------------------------------------------ matching

    def match_tick(self) -> TradeReport:
        """Match every open order (and the Market Maker) once; settle the trades."""
        report = TradeReport()
        rows = np.flatnonzero(self.o_alive[: self.n_rows])
        n = len(rows)
        if n == 0:
            return report
        asset = self.o_asset[rows]
        book = OrderBook(
            market=self.grid.asset_market[asset],
            is_bid=self.o_bid[rows],
            rate=self.o_rate[rows],
            energy=self.o_energy[rows],
        )
        fees = self.market_fee  # fixed when the slot's market opened
        trades = match(
            book,
            self.market_parent,
            self.market_depth,
            fees,
            self.grid.market_maker_rate,
            self.grid.feed_in_tariff_rate,
        )
        if len(trades) == 0:
            return report
        # The Market Maker's order indices change every tick (len(book), len(book)+1): keep them
        # as stable sentinels (-1 its offer, -2 its bid) in the slot's trade log for statistics.
        self._slot_trades.append(
            replace(
                trades,
                bid=np.where(trades.bid == n + 1, -2, trades.bid),
                offer=np.where(trades.offer == n, -1, trades.offer),
            )
        )
        self.total_trades += len(trades)
        self.total_energy += float(trades.energy.sum())
        asset_mm = np.concatenate((asset, [-1, -1]))
        buyer = asset_mm[trades.bid]
        seller = asset_mm[trades.offer]
        price = trades.rate * trades.energy
        fee = trades.fee_rate * trades.energy
        nb = buyer >= 0
        ns = seller >= 0
        np.add.at(self.bought, buyer[nb], trades.energy[nb])
        np.add.at(self.cost, buyer[nb], price[nb])
        np.add.at(
            self.used,
            buyer[nb],
            np.where(self.grid.kind[buyer[nb]] == Kind.STORAGE, trades.energy[nb], 0.0),
        )
        np.add.at(self.sold, seller[ns], trades.energy[ns])
        np.subtract.at(self.cost, seller[ns], (price - fee)[ns])
        np.subtract.at(
            self.used,
            seller[ns],
            np.where(self.grid.kind[seller[ns]] == Kind.STORAGE, trades.energy[ns], 0.0),
        )
        # Open energies shrink trade by trade, in trade order (as a Python loop would).
        rows_mm = np.concatenate((rows, [-1, -1]))
        t_bid_row = rows_mm[trades.bid]
        t_off_row = rows_mm[trades.offer]
        both = np.empty(2 * len(trades), dtype=np.int64)
        both[0::2], both[1::2] = t_bid_row, t_off_row
        q2 = np.repeat(trades.energy, 2)
        own = both >= 0
        np.subtract.at(self.o_energy, both[own], q2[own])
        touched = _distinct(both[own], self.n_rows)
        done_rows = touched[self.o_energy[touched] <= EPS_KWH]
        self.o_alive[done_rows] = False
        # Touched assets: active energies recounted from their live orders, oldest first.
        t_assets = _distinct(self.o_asset[touched], self.grid.n_assets)
        self.active_bid[t_assets] = 0.0
        self.active_offer[t_assets] = 0.0
        live = rows[self.o_alive[rows]]
        is_touched = np.zeros(self.grid.n_assets, dtype=bool)
        is_touched[t_assets] = True
        live = live[is_touched[self.o_asset[live]]]
        lb = self.o_bid[live]
        np.add.at(self.active_bid, self.o_asset[live[lb]], self.o_energy[live[lb]])
        np.add.at(self.active_offer, self.o_asset[live[~lb]], self.o_energy[live[~lb]])
        report.buyer = buyer
        report.seller = seller
        report.energy = trades.energy
        report.price = price
        report.fee = fee
        base = self._seq_base + 1
        report.bid_seq = np.where(t_bid_row >= 0, t_bid_row + base, -1)
        report.offer_seq = np.where(t_off_row >= 0, t_off_row + base, -1)
        report.bid_residual = (t_bid_row >= 0) & self.o_alive[np.maximum(t_bid_row, 0)]
        report.offer_residual = (t_off_row >= 0) & self.o_alive[np.maximum(t_off_row, 0)]
        return report


def _concat(parts: list[Trades]) -> Trades:
    """Concatenate one slot's per-tick trades."""
    if not parts:
        return Trades(*(np.zeros(0, dtype=np.int64) for _ in range(8)))
    return Trades(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in (
                "bid",
                "offer",
                "energy",
                "market",
                "rate",
                "fee_rate",
                "bid_origin",
                "offer_origin",
            )
        )
    )


def _distinct(values: np.ndarray, bound: int) -> np.ndarray:
    """``np.unique(values)`` for integers in ``[0, bound)``: a mask instead of a sort."""
    seen = np.zeros(bound, dtype=bool)
    seen[values] = True
    return np.flatnonzero(seen)
