"""The exchange's market state: asset energy per slot, open orders, fees, trades and stats.

One :class:`ExchangeState` is owned by the engine thread; nothing here does I/O.

Frozen, with one deliberate change since: the grid-fee rule follows gsy-e (a market's fee is fixed
when its slot opens, a ``grid_fees`` command takes effect with the next slot's market, and
``last_fee`` is the last closed market's fee), the same rule as ``gridfleet.simulator.state``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np

from gridfleet.simulator import profiles
from gridfleet.simulator.grid import LOAD, PV, Grid, Kind
from gridfleet.simulator.matching import EPS_KWH, OrderBook, Trades, match
from gridfleet.simulator.stats import MarketStats, compute_stats

MARKET_SLOT_FORMAT = "%Y-%m-%dT%H:%M"
OFFER_TOLERANCE_KWH = 2e-5  # gsy-e accepts offers this much above what is available
MIN_ENERGY_KWH = 2e-5  # orders at or below this are rejected


@dataclass(slots=True)
class Order:
    id: str
    asset: int
    is_bid: bool
    energy: float  # open energy (kWh)
    rate: float  # ct/kWh
    original_price: float | int
    creation_time: str
    json: str = ""  # the order as gsy-e renders it in responses (filled on creation)


@dataclass
class TradeReport:
    """One tick's trades, ready for the trade events: parallel lists, one row per trade."""

    buyer: list[int] = field(default_factory=list)  # asset index, -1 for the Market Maker
    seller: list[int] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    price: list[float] = field(default_factory=list)  # ct paid by the buyer
    fee: list[float] = field(default_factory=list)  # ct of grid fees
    bid_id: list[str] = field(default_factory=list)
    offer_id: list[str] = field(default_factory=list)
    bid_residual: list[bool] = field(default_factory=list)
    offer_residual: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.buyer)


class ExchangeState:
    """Market state of one simulation."""

    def __init__(self, grid: Grid, slot_length: timedelta, start: datetime) -> None:
        self.grid = grid
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
        self.orders: dict[str, Order] = {}
        self.asset_orders: list[list[Order]] = [[] for _ in range(n)]
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
        takes the area's fee now (gsy-e's ``AreaMarkets._create_market``)."""
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
        self.orders.clear()
        for lst in self.asset_orders:
            lst.clear()
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

    def asset_info(self, a: int) -> dict[str, float]:
        """The ``asset_info`` / ``device_info`` dict of one asset, as gsy-e shapes it per kind."""
        kind = self.grid.kind_list[a]
        traded = round(float(self.bought[a] + self.sold[a]), 8)
        cost = round(float(self.cost[a]), 8)
        if kind == LOAD:
            return {
                "energy_requirement_kWh": round(self.requirement(a), 8),
                "energy_active_in_bids": round(float(self.active_bid[a]), 8),
                "energy_traded": traded,
                "total_cost": cost,
            }
        if kind == PV:
            return {
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

    def next_order_id(self) -> str:
        # uuid-shaped and unique, but ~10x cheaper than uuid4() at 100 000 orders per tick
        self._order_seq += 1
        return f"00000000-0000-4000-8000-{self._order_seq:012x}"

    def add_order(
        self, a: int, is_bid: bool, energy: float, price: float | int, creation_time: str
    ) -> Order:
        """Place an already validated order."""
        rate = price / energy
        self._order_seq += 1
        oid = f"00000000-0000-4000-8000-{self._order_seq:012x}"
        o = Order(oid, a, is_bid, energy, rate, price, creation_time)
        # gsy-e's rendering (json.dumps with ", " and ": "), formatted directly: 5x faster
        o.json = (
            f'{{"type": "{"Bid" if is_bid else "Offer"}", "id": "{oid}", "energy": {energy!r}, '
            f'"energy_rate": {round(rate, 8)!r}, "price": {round(price, 8)!r}, '
            f'"original_price": {price!r}, "creation_time": "{creation_time}", '
            f'"time_slot": "{self._time_slot}", "{"buyer" if is_bid else "seller"}": {self._party[a]}}}'
        )
        self.orders[o.id] = o
        self.asset_orders[a].append(o)
        if is_bid:
            self.active_bid[a] += energy
        else:
            self.active_offer[a] += energy
        return o

    def open_energy(self, a: int, is_bid: bool) -> float:
        return float(self.active_bid[a] if is_bid else self.active_offer[a])

    def delete_orders(self, a: int, is_bid: bool, order_id: str | None = None) -> list[str]:
        """Delete the asset's bids (or offers), all of them or only ``order_id``."""
        keep: list[Order] = []
        gone: list[str] = []
        for o in self.asset_orders[a]:
            if o.is_bid == is_bid and (order_id is None or o.id == order_id):
                gone.append(o.id)
                self.orders.pop(o.id, None)
            else:
                keep.append(o)
        if gone:
            self.asset_orders[a] = keep
            self._recount(a)
        return gone

    def list_orders(self, a: int, is_bid: bool) -> list[Order]:
        return [o for o in self.asset_orders[a] if o.is_bid == is_bid]

    def _recount(self, a: int) -> None:
        self.active_bid[a] = sum(o.energy for o in self.asset_orders[a] if o.is_bid)
        self.active_offer[a] = sum(o.energy for o in self.asset_orders[a] if not o.is_bid)

    def set_energy(self, a: int, slot: str, kwh: float, measurement: bool = False) -> None:
        """A forecast (or measurement) for ``slot``; a forecast for the open slot applies now."""
        (self.measurement if measurement else self.forecast)[(a, slot)] = kwh
        if not measurement and slot == self.market_slot:
            self.demand[a] = kwh

    # ------------------------------------------------------------------ matching

    def match_tick(self) -> TradeReport:
        """Match every open order (and the Market Maker) once; settle the trades."""
        report = TradeReport()
        orders = list(self.orders.values())
        n = len(orders)
        if n == 0:
            return report
        asset = np.fromiter((o.asset for o in orders), dtype=np.int64, count=n)
        book = OrderBook(
            market=self.grid.asset_market[asset],
            is_bid=np.fromiter((o.is_bid for o in orders), dtype=bool, count=n),
            rate=np.fromiter((o.rate for o in orders), dtype=np.float64, count=n),
            energy=np.fromiter((o.energy for o in orders), dtype=np.float64, count=n),
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
        touched: set[int] = set()
        for t_bid, t_offer, q in zip(
            trades.bid.tolist(), trades.offer.tolist(), trades.energy.tolist(), strict=True
        ):
            for idx in (t_bid, t_offer):
                if idx < n:
                    orders[idx].energy -= q
                    touched.add(idx)
        done = {i for i in touched if orders[i].energy <= EPS_KWH}
        for i in done:
            self.orders.pop(orders[i].id, None)
        for a in {orders[i].asset for i in touched}:
            self.asset_orders[a] = [o for o in self.asset_orders[a] if o.energy > EPS_KWH]
            self._recount(a)
        mm_id_offer, mm_id_bid = "market-maker-offer", "market-maker-bid"
        report.buyer = buyer.tolist()
        report.seller = seller.tolist()
        report.energy = trades.energy.tolist()
        report.price = price.tolist()
        report.fee = fee.tolist()
        report.bid_id = [orders[i].id if i < n else mm_id_bid for i in trades.bid.tolist()]
        report.offer_id = [orders[i].id if i < n else mm_id_offer for i in trades.offer.tolist()]
        report.bid_residual = [i < n and i not in done for i in trades.bid.tolist()]
        report.offer_residual = [i < n and i not in done for i in trades.offer.tolist()]
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
