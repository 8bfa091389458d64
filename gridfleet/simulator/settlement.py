"""Settlement markets: the deviation between an asset's measurement and its spot trades, traded
after the slot (gsy-e's ``SettlementMarket``, as captured in tests/fixtures/protocol/settlement).

- At each market cycle the slot that has just ended gets a settlement market; it stays open for
  an hour (``MAX_AGE``), so with 15-minute slots up to four are open at once.
- An asset's deviation for a slot is fixed when the market opens and again whenever a later
  measurement for that slot arrives (the later one overwrites it): load ``measured - bought``,
  PV ``sold - measured``. Positive: the asset must buy (a settlement bid); negative: it must sell
  (an offer). The unsettled amount starts at ``|deviation|`` and every settlement trade of the
  asset lowers it.
- Measurements are applied at the next market cycle, and only for slots before the new spot
  slot whose settlement market is open; others are answered ``ready`` and dropped (gsy-e's
  ``ForecastExternalMixin``).
- Which assets measure themselves: any asset that has sent a forecast or a measurement (gsy-e's
  forecast-driven strategies). Every other load and PV gets a simulated measurement, its slot
  energy times ``1 + N(0, 10 %)`` (gsy-e's ``compute_altered_energy`` for the other strategies),
  seeded, so runs repeat.
- Orders name the market with ``time_slot``; each market is matched on every tick, pay as bid,
  over the market tree with its grid fees like the spot market, without a Market Maker (the
  capture shows only assets as counterparties).

Nothing here does I/O; :class:`SettlementMarkets` is owned by the engine thread through
:class:`~gridfleet.simulator.state.ExchangeState`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import orjson

from gridfleet.exchange.rules import MIN_ORDER_ENERGY_KWH
from gridfleet.simulator.grid import LOAD, PV, Grid
from gridfleet.simulator.matching import EPS_KWH, OrderBook, match

SETTLEMENT_MARKET = "Settlement Market"
MAX_AGE = timedelta(hours=1)  # gsy-e's MAX_AGE_SETTLEMENT_MARKET_HOURS
SIMULATED_MEASUREMENT_STD = 0.10  # gsy-e's RELATIVE_STD_FROM_FORECAST_FLOAT (10 %)
ORDER_ID_PREFIX = "00000000-0000-4000-a000-"  # spot orders use ...-8000-; both are uuid-shaped
LABEL_FORMAT = "%Y-%m-%dT%H:%M"

# gsy-e's str_to_pendulum_datetime accepts these (gsy-framework utils.py); the time-only ones
# take the current calendar date, not the simulation's.
_DATED_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H", "%B %d %Y, %H:%M h")
_TIME_FORMATS = ("%H:%M", "%H:%M:%S", "%H")


def parse_time_slot(text: object, today: date | None = None) -> str | None:
    """The slot label (``YYYY-MM-DDTHH:MM``) a ``time_slot`` or measurement key names, as gsy-e
    parses it; None when gsy-e would not parse it (an offset, a free text, not a string)."""
    if not isinstance(text, str) or len(text) > 40:
        return None
    for fmt in _DATED_FORMATS:
        try:
            return datetime.strptime(text, fmt).strftime(LABEL_FORMAT)
        except ValueError:
            pass
    for fmt in _TIME_FORMATS:
        try:
            t = datetime.strptime(text, fmt).time()
        except ValueError:
            continue
        day = today or datetime.now(UTC).date()
        return datetime.combine(day, t).strftime(LABEL_FORMAT)
    return None


@dataclass
class SettlementSlot:
    """One open settlement market: the settled slot's spot trades, deviations and orders."""

    label: str  # YYYY-MM-DDTHH:MM, the key of unsettled_deviation_kWh
    start: datetime
    bought: np.ndarray  # kWh each asset bought in the slot's spot market
    sold: np.ndarray
    deviation: np.ndarray  # signed kWh; nan: no measurement
    unsettled: np.ndarray  # kWh still to settle (>= 0)
    # orders, one row each: asset, side, open energy, rate, alive, order number
    o_asset: list[int] = field(default_factory=list)
    o_bid: list[bool] = field(default_factory=list)
    o_energy: list[float] = field(default_factory=list)
    o_rate: list[float] = field(default_factory=list)
    o_alive: list[bool] = field(default_factory=list)
    o_seq: list[int] = field(default_factory=list)
    # (asset, is bid) -> its rows, live or not: an asset's orders without a scan of all of them
    rows_of: dict[tuple[int, bool], list[int]] = field(default_factory=dict)

    @property
    def time_slot(self) -> str:
        return self.start.strftime("%Y-%m-%dT%H:%M:%S")

    def live_rows(self, a: int, is_bid: bool) -> list[int]:
        """The asset's live bid (or offer) rows, oldest first."""
        return [r for r in self.rows_of.get((a, is_bid), ()) if self.o_alive[r]]

    def add(self, a: int, is_bid: bool, energy: float, rate: float, seq: int) -> None:
        self.rows_of.setdefault((a, is_bid), []).append(len(self.o_asset))
        self.o_asset.append(a)
        self.o_bid.append(is_bid)
        self.o_energy.append(energy)
        self.o_rate.append(rate)
        self.o_alive.append(True)
        self.o_seq.append(seq)

    def signed(self, a: int) -> float | None:
        """gsy-e's ``get_signed_unsettled_deviation_kWh``: None when there is no measurement,
        no deviation or nothing left to settle; rounded to 8 decimals like every figure here."""
        dev = float(self.deviation[a])
        left = float(self.unsettled[a])
        if math.isnan(dev) or dev == 0.0 or left <= 0.0:
            return None
        value = round(math.copysign(left, dev), 8)
        return value or None


@dataclass
class SettlementTrades:
    """One tick's settlement trades, as columns (see :class:`~gridfleet.simulator.state.TradeReport`)."""

    buyer: np.ndarray
    seller: np.ndarray
    energy: np.ndarray
    price: np.ndarray
    fee: np.ndarray
    bid_seq: np.ndarray
    offer_seq: np.ndarray
    bid_residual: np.ndarray
    offer_residual: np.ndarray


class OrderRefused(ValueError):
    """A settlement order the market does not take; ``reason`` is gsy-e's text ("" for none)."""

    def __init__(self, reason: str = "", label_as_offer: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        # gsy-e answers a refused settlement bid of a PV or a load as an "offer" error
        self.label_as_offer = label_as_offer


class SettlementMarkets:
    """The open settlement markets of one simulation and the assets' deviations."""

    def __init__(self, grid: Grid, seed: int = 0) -> None:
        self.grid = grid
        self.seed = seed
        n = grid.n_assets
        self.slots: dict[str, SettlementSlot] = {}  # open markets, oldest first
        self.self_measured = np.zeros(n, dtype=bool)
        self.pending: dict[tuple[int, str], float] = {}  # measurements for the next cycle
        # bumped when an asset's deviations change, so event leaves are re-rendered
        self.version = np.zeros(n, dtype=np.int64)
        self._seq = 0
        self.trades = 0
        self.energy_kwh = 0.0
        self.orders = 0
        self._closed_deviation_kwh = 0.0  # sum of |deviation| of the markets closed so far
        self._closed_left_kwh = 0.0  # what they left unsettled
        self._market_of = grid.asset_market.astype(np.int64)
        self._settles = (grid.kind == LOAD) | (grid.kind == PV)

    # ------------------------------------------------------------------ the market cycle

    def cycle(
        self,
        closed_index: int,
        closed_start: datetime,
        bought: np.ndarray,
        sold: np.ndarray,
        energy: np.ndarray,
        new_start: datetime,
    ) -> None:
        """The market cycle after spot slot ``closed_index`` (its trades and slot energy given):
        open its settlement market, apply the buffered measurements, close markets older than
        :data:`MAX_AGE`."""
        label = closed_start.strftime(LABEL_FORMAT)
        n = self.grid.n_assets
        slot = SettlementSlot(
            label=label,
            start=closed_start,
            bought=bought.copy(),
            sold=sold.copy(),
            deviation=np.full(n, np.nan),
            unsettled=np.zeros(n),
        )
        self.slots[label] = slot
        simulated = self._settles & ~self.self_measured
        if simulated.any():
            rng = np.random.default_rng((self.seed, closed_index))
            noise = rng.normal(0.0, SIMULATED_MEASUREMENT_STD, n)
            measured = np.maximum(energy * (1.0 + noise), 0.0)
            idx = np.flatnonzero(simulated)
            self._measure(slot, idx, measured[idx])
        new_label = new_start.strftime(LABEL_FORMAT)
        pending, self.pending = self.pending, {}
        for (a, key), kwh in pending.items():
            target = self.slots.get(key)
            if target is not None and key < new_label:
                self._measure(target, np.array([a]), np.array([kwh]))
        for key in [k for k, s in self.slots.items() if s.start < new_start - MAX_AGE]:
            dev, left = _totals(self.slots.pop(key))
            self._closed_deviation_kwh += dev
            self._closed_left_kwh += left
        self.version += 1

    def _measure(self, slot: SettlementSlot, idx: np.ndarray, measured: np.ndarray) -> None:
        kind = self.grid.kind[idx]
        dev = np.where(kind == LOAD, measured - slot.bought[idx], slot.sold[idx] - measured)
        slot.deviation[idx] = dev
        slot.unsettled[idx] = np.abs(dev)

    def set_measurement(self, a: int, label: str, kwh: float) -> None:
        """A measurement command: applied at the next market cycle."""
        self.self_measured[a] = True
        self.pending[(a, label)] = kwh

    def set_forecast(self, a: int) -> None:
        """A forecast command: the asset measures itself from now on."""
        self.self_measured[a] = True

    def totals(self) -> tuple[float, float]:
        """(kWh of deviation, kWh of it still unsettled) over every market opened so far."""
        dev, left = self._closed_deviation_kwh, self._closed_left_kwh
        for slot in self.slots.values():
            d, u = _totals(slot)
            dev, left = dev + d, left + u
        return dev, left

    # ------------------------------------------------------------------ what events show

    def info(self, a: int) -> dict[str, float | None]:
        """``asset_info.unsettled_deviation_kWh`` of asset ``a``: open markets, oldest first."""
        return {label: slot.signed(a) for label, slot in self.slots.items()}

    def info_json(self, a: int) -> str:
        """The same as a JSON member, ready to open an ``asset_info`` object."""
        return '"unsettled_deviation_kWh":' + orjson.dumps(self.info(a)).decode()

    def uncovered_any(self) -> np.ndarray:
        """Per asset: is anything left to settle in an open market that its live orders there
        do not already cover? (An asset whose orders cover its deviations has nothing to do.)"""
        n = self.grid.n_assets
        out = np.zeros(n, dtype=bool)
        for slot in self.slots.values():
            covered = np.zeros(n)
            if slot.o_asset:
                alive = np.asarray(slot.o_alive, dtype=bool)
                np.add.at(
                    covered,
                    np.asarray(slot.o_asset, dtype=np.int64)[alive],
                    np.asarray(slot.o_energy)[alive],
                )
            out |= (slot.unsettled - covered > MIN_ORDER_ENERGY_KWH) & ~np.isnan(slot.deviation)
        return out

    # ------------------------------------------------------------------ orders

    def order(
        self,
        a: int,
        label: str,
        is_bid: bool,
        energy: float,
        price: float,
        replace: bool,
        tolerance: float,
    ) -> tuple[str, float, str]:
        """Place a validated-shape settlement order; returns (order id, rate, time_slot as the
        order shows it). Raises :class:`OrderRefused` with gsy-e's reason."""
        slot = self.slots[label]
        kind = int(self.grid.kind[a])
        if kind not in (LOAD, PV):
            raise OrderRefused("Settlement markets are not supported for storages.")
        dev = float(slot.deviation[a])
        left = float(slot.unsettled[a])
        sign_ok = not math.isnan(dev) and left > 0.0 and (dev > 0 if is_bid else dev < 0)
        if not sign_ok:
            raise OrderRefused(_wrong_sign_reason(kind, is_bid), label_as_offer=True)
        room = left
        if not replace:
            room -= sum(slot.o_energy[r] for r in slot.live_rows(a, is_bid))
        if energy > room + tolerance:
            raise OrderRefused()
        if replace:
            for r in slot.live_rows(a, is_bid):
                slot.o_alive[r] = False
        self._seq += 1
        self.orders += 1
        slot.add(a, is_bid, energy, price / energy, self._seq)
        # gsy-e shows a bid's settled slot with seconds and an offer's as it was named
        shown = slot.time_slot if is_bid else label
        return f"{ORDER_ID_PREFIX}{self._seq:012x}", price / energy, shown

    def delete(self, a: int, label: str, is_bid: bool, order_id: str | None) -> list[str]:
        slot = self.slots[label]
        gone = []
        for r in slot.live_rows(a, is_bid):
            oid = f"{ORDER_ID_PREFIX}{slot.o_seq[r]:012x}"
            if order_id is None or oid == order_id:
                slot.o_alive[r] = False
                gone.append(oid)
        return gone

    def list(self, a: int, label: str, is_bid: bool) -> list[tuple[str, float, float]]:
        """(id, rate, open energy) of the asset's live orders in that market, oldest first."""
        slot = self.slots[label]
        return [
            (f"{ORDER_ID_PREFIX}{slot.o_seq[r]:012x}", slot.o_rate[r], slot.o_energy[r])
            for r in slot.live_rows(a, is_bid)
        ]

    # ------------------------------------------------------------------ matching

    def match_tick(
        self, market_parent: np.ndarray, market_depth: np.ndarray, fees: np.ndarray
    ) -> SettlementTrades | None:
        """Match every open settlement market once; lower the traded assets' unsettled amounts."""
        parts: list[tuple[np.ndarray, ...]] = []
        for slot in self.slots.values():
            rows = np.flatnonzero(np.asarray(slot.o_alive, dtype=bool))
            if len(rows) < 2:
                continue
            asset = np.asarray(slot.o_asset, dtype=np.int64)[rows]
            is_bid = np.asarray(slot.o_bid, dtype=bool)[rows]
            if is_bid.all() or not is_bid.any():
                continue
            energy = np.asarray(slot.o_energy)[rows]
            book = OrderBook(
                market=self._market_of[asset],
                is_bid=is_bid,
                rate=np.asarray(slot.o_rate)[rows],
                energy=energy,
            )
            trades = match(book, market_parent, market_depth, fees, 0.0, 0.0, market_maker=False)
            if len(trades) == 0:
                continue
            b_row, o_row = rows[trades.bid], rows[trades.offer]
            for r, q in zip(
                np.concatenate((b_row, o_row)).tolist(),
                np.concatenate((trades.energy, trades.energy)).tolist(),
                strict=True,
            ):
                slot.o_energy[r] -= q
                if slot.o_energy[r] <= EPS_KWH:
                    slot.o_alive[r] = False
            buyer, seller = asset[trades.bid], asset[trades.offer]
            for side in (buyer, seller):
                np.subtract.at(slot.unsettled, side, trades.energy)
            np.maximum(slot.unsettled, 0.0, out=slot.unsettled)
            self.version[buyer] += 1
            self.version[seller] += 1
            seq = np.asarray(slot.o_seq, dtype=np.int64)
            alive = np.asarray(slot.o_alive, dtype=bool)
            parts.append(
                (
                    buyer,
                    seller,
                    trades.energy,
                    trades.rate * trades.energy,
                    trades.fee_rate * trades.energy,
                    seq[b_row],
                    seq[o_row],
                    alive[b_row],
                    alive[o_row],
                )
            )
        if not parts:
            return None
        cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
        out = SettlementTrades(*cols)
        self.trades += len(out.energy)
        self.energy_kwh += float(out.energy.sum())
        return out


def _totals(slot: SettlementSlot) -> tuple[float, float]:
    measured = ~np.isnan(slot.deviation)
    return (
        float(np.abs(slot.deviation[measured]).sum()),
        float(slot.unsettled[measured].sum()),
    )


def _wrong_sign_reason(kind: int, is_bid: bool) -> str:
    # The load-offer and PV-bid texts are gsy-e's, as captured (probes 11 and 14); the other
    # two follow them.
    if kind == LOAD:
        if is_bid:
            return (
                "('The load did not consume too little energy, ', "
                "'settlement bid can not be posted')"
            )
        return (
            "('The load did not consume too much energy, ', 'settlement offer can not be posted')"
        )
    if is_bid:
        return "The PV did not produce too little energy, settlement bid can not be posted."
    return "The PV did not produce too much energy, settlement offer can not be posted."
