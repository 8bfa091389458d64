"""Outbound batch commands: built from strategy intents, validated before anything is sent.

The real exchange dies on some malformed commands (``11_CRASH_*``: a bid without price, an order
with an extra key, an offer without energy, energy as a string, a ``time_slot`` that is not an
open market) and rejects others (negative price, energy at or below 2e-5 kWh, a bid above the
requirement, an offer above what is available, a bid on a PV, an offer on a load). Every such
command is refused here with an :class:`OutboundRejected` naming the asset, the command and why.

Validation is in two layers:

1. *shape*: each command is converted into a strict msgspec struct (unknown keys forbidden, no
   string-to-number coercion, required keys required);
2. *meaning*: numbers checked against the asset's kind and its energies in this round, and the
   ``time_slot`` against the markets open now.

:func:`validate_orders` applies the same rules to a whole shard's order arrays at once (numpy),
which is what the hot path uses; :func:`validate_command` handles any single command.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec
import numpy as np
from msgspec import Struct

from gridfleet.exchange.rules import MIN_ORDER_ENERGY_KWH, OFFER_TOLERANCE_KWH
from gridfleet.strategies import commands as intent
from gridfleet.strategies.bounds import (
    MAX_ORDER_ENERGY_KWH,
    MAX_ORDER_PRICE_CT,
    MAX_RATE_CT_PER_KWH,
)
from gridfleet.strategies.context import AssetKind, FloatArray

ORDER_KEYS = frozenset(
    {"type", "energy", "price", "transaction_id", "replace_existing", "time_slot"}
)
"""The keys gsy-e 1.3.0 accepts on a bid or offer; any other key kills it."""


class OutboundRejected(ValueError):
    """A command gridfleet refuses to send."""

    def __init__(self, asset: str, command: str, reason: str) -> None:
        super().__init__(f"refused {command!r} for asset {asset!r}: {reason}")
        self.asset = asset
        self.command = command
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Shapes: one strict struct per command type (tagged by "type")


class _Cmd(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, tag_field="type"):
    transaction_id: str | None = None


class BidCmd(_Cmd, tag="bid"):
    energy: float
    price: float
    replace_existing: bool = True
    time_slot: str | None = None


class BidWithRequirementsCmd(_Cmd, tag="bid"):
    """A bid carrying degrees of freedom; only for exchanges that accept them."""

    energy: float
    price: float
    replace_existing: bool = True
    time_slot: str | None = None
    requirements: list[dict[str, Any]] | None = None
    attributes: dict[str, Any] | None = None


class OfferCmd(_Cmd, tag="offer"):
    energy: float
    price: float
    replace_existing: bool = True
    time_slot: str | None = None


class DeleteBidCmd(_Cmd, tag="delete_bid"):
    bid_id: str | None = None


class DeleteOfferCmd(_Cmd, tag="delete_offer"):
    offer_id: str | None = None


class ListBidsCmd(_Cmd, tag="list_bids"):
    pass


class ListOffersCmd(_Cmd, tag="list_offers"):
    pass


class DeviceInfoCmd(_Cmd, tag="device_info"):
    pass


class DsoMarketStatsCmd(_Cmd, tag="dso_market_stats"):
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class GridFeesData(Struct, forbid_unknown_fields=True, omit_defaults=True):
    fee_const: float | None = None
    fee_percent: float | None = None


class GridFeesCmd(_Cmd, tag="grid_fees"):
    data: GridFeesData


class SetEnergyForecastCmd(_Cmd, tag="set_energy_forecast"):
    energy_forecast: dict[str, float]


class SetEnergyMeasurementCmd(_Cmd, tag="set_energy_measurement"):
    energy_measurement: dict[str, float]


_NON_BID_COMMANDS = (
    OfferCmd
    | DeleteBidCmd
    | DeleteOfferCmd
    | ListBidsCmd
    | ListOffersCmd
    | DeviceInfoCmd
    | DsoMarketStatsCmd
    | GridFeesCmd
    | SetEnergyForecastCmd
    | SetEnergyMeasurementCmd
)
WireCommand = BidCmd | _NON_BID_COMMANDS
_WIRE_WITH_REQUIREMENTS = BidWithRequirementsCmd | _NON_BID_COMMANDS

ASSET_COMMANDS = frozenset(
    {
        "bid",
        "offer",
        "delete_bid",
        "delete_offer",
        "list_bids",
        "list_offers",
        "device_info",
        "set_energy_forecast",
        "set_energy_measurement",
    }
)
MARKET_COMMANDS = frozenset({"dso_market_stats", "grid_fees"})


# ---------------------------------------------------------------------------------------------
# What the check needs to know about the asset and the markets


@dataclass(frozen=True, slots=True)
class Target:
    """An asset or market a command is for, with what the exchange told us of it this round."""

    uuid: str
    name: str
    kind: AssetKind | None  # None for a market
    energy_requirement_kwh: float = 0.0
    available_energy_kwh: float = 0.0
    energy_to_buy_kwh: float = 0.0
    energy_to_sell_kwh: float = 0.0
    # time_slot -> kWh still to settle (settlement markets); orders there are capped by it.
    unsettled_deviation_kwh: Mapping[str, float] = field(default_factory=dict)

    @property
    def is_market(self) -> bool:
        return self.kind is None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.uuid})" if self.name and self.name != self.uuid else self.uuid


@dataclass(frozen=True, slots=True)
class OpenMarkets:
    """The market slots orders may name: the spot slot and any settlement/future slots."""

    spot_slot: str
    other_slots: frozenset[str] = frozenset()

    def is_open(self, slot: str) -> bool:
        return slot == self.spot_slot or slot in self.other_slots


@dataclass(frozen=True, slots=True)
class ExchangeProfile:
    """What the exchange on the other end accepts beyond gsy-e 1.3.0's captured behaviour."""

    accepts_requirements: bool = False  # degrees of freedom on bids


GSY_E_1_3 = ExchangeProfile()


# ---------------------------------------------------------------------------------------------
# Single-command validation


_SLOT_LABEL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def _is_slot_label(text: str) -> bool:
    """A market slot as the exchange names it in events (``2024-06-01T12:15``), a real date."""
    if not _SLOT_LABEL.fullmatch(text):
        return False
    try:
        datetime.strptime(text, "%Y-%m-%dT%H:%M")
    except ValueError:
        return False
    return True


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shape(raw: Mapping[str, Any], target: Target, profile: ExchangeProfile) -> Any:
    ctype = raw.get("type")
    if not isinstance(ctype, str):
        raise OutboundRejected(target.label, repr(ctype), "missing or non-string 'type'")
    if ctype in ("bid", "offer"):
        # Say exactly which key is wrong: these are the cases that crash the exchange.
        allowed = ORDER_KEYS | (
            {"requirements", "attributes"}
            if profile.accepts_requirements and ctype == "bid"
            else set()
        )
        extra = sorted(set(raw) - allowed)
        if extra:
            raise OutboundRejected(
                target.label, ctype, f"unexpected key(s) {extra}; allowed: {sorted(allowed)}"
            )
        for key in ("energy", "price"):
            if key not in raw:
                raise OutboundRejected(target.label, ctype, f"missing {key!r}")
            if not _is_number(raw[key]):
                raise OutboundRejected(
                    target.label, ctype, f"{key!r} must be a number, got {raw[key]!r}"
                )
    model = _WIRE_WITH_REQUIREMENTS if profile.accepts_requirements else WireCommand
    try:
        return msgspec.convert(raw, model, strict=True)
    except msgspec.ValidationError as exc:
        if "Invalid value" in str(exc) and "$.type" in str(exc):
            raise OutboundRejected(target.label, ctype, "unknown command type") from exc
        raise OutboundRejected(target.label, ctype, str(exc)) from exc


def _check_bounds(label: str, ctype: str, energy: float, price: float) -> None:
    """gridfleet's own upper bounds (:mod:`gridfleet.strategies.bounds`) on a finite order."""
    if energy > MAX_ORDER_ENERGY_KWH:
        raise OutboundRejected(
            label, ctype, f"energy {energy} kWh above the bound of {MAX_ORDER_ENERGY_KWH:g} kWh"
        )
    if price > MAX_ORDER_PRICE_CT:
        raise OutboundRejected(
            label, ctype, f"price {price} ct above the bound of {MAX_ORDER_PRICE_CT:g} ct"
        )
    if price > MAX_RATE_CT_PER_KWH * energy:
        raise OutboundRejected(
            label,
            ctype,
            f"rate {price / energy} ct/kWh above the bound of {MAX_RATE_CT_PER_KWH:g} ct/kWh",
        )


def _check_requirements(label: str, energy: float, requirements: list[dict[str, Any]]) -> None:
    """Degrees of freedom carry numbers of their own: the same rules as the bid's."""
    for i, requirement in enumerate(requirements):
        where = f"requirements[{i}]"
        for key in ("energy", "price"):
            if key in requirement and not _is_number(requirement[key]):
                raise OutboundRejected(
                    label, "bid", f"{where}.{key} must be a number, got {requirement[key]!r}"
                )
        req_energy = requirement.get("energy")
        if req_energy is not None and not (
            math.isfinite(req_energy) and MIN_ORDER_ENERGY_KWH < req_energy <= energy
        ):
            raise OutboundRejected(
                label,
                "bid",
                f"{where}.energy {req_energy} kWh outside ({MIN_ORDER_ENERGY_KWH}, {energy}]",
            )
        req_price = requirement.get("price")
        if req_price is not None and not (
            math.isfinite(req_price) and 0 <= req_price <= MAX_ORDER_PRICE_CT
        ):
            raise OutboundRejected(
                label, "bid", f"{where}.price {req_price} outside [0, {MAX_ORDER_PRICE_CT:g}] ct"
            )


def _check_order(cmd: Any, ctype: str, target: Target, markets: OpenMarkets) -> None:
    label = target.label
    energy, price = float(cmd.energy), float(cmd.price)
    if not (math.isfinite(energy) and math.isfinite(price)):
        raise OutboundRejected(label, ctype, "energy and price must be finite")
    if price < 0:
        raise OutboundRejected(label, ctype, f"negative price {price}")
    if energy <= MIN_ORDER_ENERGY_KWH:
        raise OutboundRejected(
            label, ctype, f"energy {energy} kWh is at or below {MIN_ORDER_ENERGY_KWH} kWh"
        )
    _check_bounds(label, ctype, energy, price)
    slot = cmd.time_slot
    if slot is not None and not markets.is_open(slot):
        raise OutboundRejected(
            label, ctype, f"time_slot {slot!r} is not an open market (open: {markets.spot_slot})"
        )
    if target.kind is None:
        raise OutboundRejected(label, ctype, "orders are for assets, not markets")
    settling = slot is not None and slot != markets.spot_slot
    if settling:
        deviation = float(target.unsettled_deviation_kwh.get(slot, 0.0))
        # Settlement goes one way: more used than bought means buying the rest, and back.
        if ctype == "bid" and deviation <= 0:
            raise OutboundRejected(
                label, ctype, f"no positive deviation to buy for {slot} (deviation {deviation} kWh)"
            )
        if ctype == "offer" and deviation >= 0:
            raise OutboundRejected(
                label,
                ctype,
                f"no negative deviation to sell for {slot} (deviation {deviation} kWh)",
            )
        cap = abs(deviation)
        if not energy <= cap + (OFFER_TOLERANCE_KWH if ctype == "offer" else 0.0):  # NaN refuses
            raise OutboundRejected(
                label, ctype, f"energy {energy} kWh above the unsettled {cap} kWh for {slot}"
            )
        return
    kind = target.kind
    if ctype == "bid":
        if kind is AssetKind.PV:
            raise OutboundRejected(label, ctype, "a PV cannot bid on the spot market")
        cap = (
            target.energy_to_buy_kwh if kind is AssetKind.STORAGE else target.energy_requirement_kwh
        )
        if not energy <= cap:  # written so that a NaN requirement refuses too
            raise OutboundRejected(
                label, ctype, f"energy {energy} kWh above the requirement {cap} kWh"
            )
    else:
        if kind is AssetKind.LOAD:
            raise OutboundRejected(label, ctype, "a load cannot offer on the spot market")
        cap = (
            target.energy_to_sell_kwh if kind is AssetKind.STORAGE else target.available_energy_kwh
        )
        if not energy <= cap + OFFER_TOLERANCE_KWH:  # NaN availability refuses too
            raise OutboundRejected(
                label, ctype, f"energy {energy} kWh above the available {cap} kWh"
            )


def validate_command(
    raw: Mapping[str, Any],
    target: Target,
    markets: OpenMarkets,
    profile: ExchangeProfile = GSY_E_1_3,
) -> dict[str, Any]:
    """Check one wire command for ``target``; return it normalised, or raise OutboundRejected."""
    cmd = _shape(raw, target, profile)
    ctype: str = raw["type"]
    if target.is_market and ctype not in MARKET_COMMANDS:
        raise OutboundRejected(target.label, ctype, f"markets take only {sorted(MARKET_COMMANDS)}")
    if not target.is_market and ctype in MARKET_COMMANDS:
        raise OutboundRejected(target.label, ctype, "only markets take this command")
    if ctype in ("bid", "offer"):
        _check_order(cmd, ctype, target, markets)
        requirements = getattr(cmd, "requirements", None)
        if requirements:
            _check_requirements(target.label, float(cmd.energy), requirements)
    elif ctype == "grid_fees":
        data = cmd.data
        if (data.fee_const is None) == (data.fee_percent is None):
            raise OutboundRejected(
                target.label, ctype, "give exactly one of fee_const or fee_percent"
            )
        fee = data.fee_const if data.fee_const is not None else data.fee_percent
        if not math.isfinite(fee) or fee < 0:
            raise OutboundRejected(
                target.label, ctype, f"fee must be a finite number >= 0, got {fee}"
            )
        if data.fee_percent is not None and data.fee_percent > 100:
            raise OutboundRejected(target.label, ctype, f"fee_percent {data.fee_percent} above 100")
        if data.fee_const is not None and data.fee_const > MAX_RATE_CT_PER_KWH:
            raise OutboundRejected(
                target.label,
                ctype,
                f"fee_const {data.fee_const} ct/kWh above the bound of {MAX_RATE_CT_PER_KWH:g}",
            )
    elif ctype in ("set_energy_forecast", "set_energy_measurement"):
        values = cmd.energy_forecast if ctype == "set_energy_forecast" else cmd.energy_measurement
        for slot, kwh in values.items():
            if not _is_slot_label(slot):
                # gsy-e answers an error for a key it cannot parse or one with an offset, and
                # reads a time-only key as today's date: only full slot labels leave
                raise OutboundRejected(
                    target.label, ctype, f"slot key {slot!r} is not a YYYY-MM-DDTHH:MM slot"
                )
            if not math.isfinite(kwh) or kwh < 0:
                raise OutboundRejected(
                    target.label, ctype, f"energy for {slot} must be >= 0, got {kwh}"
                )
            if kwh > MAX_ORDER_ENERGY_KWH:
                raise OutboundRejected(
                    target.label,
                    ctype,
                    f"energy for {slot} {kwh} kWh above the bound of {MAX_ORDER_ENERGY_KWH:g} kWh",
                )
    # What was checked is what is sent: the caller's dict, not a re-encoding of it.
    out = dict(raw)
    if ctype in ("bid", "offer") and out["price"] == 0:
        out["price"] = 0.0  # "-0.0" on the wire is legal but odd: send a plain zero
    return out


# ---------------------------------------------------------------------------------------------
# Strategy intents -> wire dicts


def to_wire(cmd: intent.Command) -> dict[str, Any]:
    """The wire form of a strategy intent (not yet validated). Prices become total cents."""
    match cmd:
        case intent.Bid():
            out: dict[str, Any] = {
                "type": "bid",
                "energy": cmd.energy_kwh,
                "price": cmd.rate * cmd.energy_kwh,
                "replace_existing": cmd.replace_existing,
            }
            if cmd.time_slot is not None:
                out["time_slot"] = cmd.time_slot
            if cmd.requirements is not None:
                out["requirements"] = cmd.requirements
            return out
        case intent.Offer():
            out = {
                "type": "offer",
                "energy": cmd.energy_kwh,
                "price": cmd.rate * cmd.energy_kwh,
                "replace_existing": cmd.replace_existing,
            }
            if cmd.time_slot is not None:
                out["time_slot"] = cmd.time_slot
            return out
        case intent.DeleteBid():
            return {"type": "delete_bid"} | ({"bid_id": cmd.order_id} if cmd.order_id else {})
        case intent.DeleteOffer():
            return {"type": "delete_offer"} | ({"offer_id": cmd.order_id} if cmd.order_id else {})
        case intent.ListBids():
            return {"type": "list_bids"}
        case intent.ListOffers():
            return {"type": "list_offers"}
        case intent.DeviceInfo():
            return {"type": "device_info"}
        case intent.SetEnergyForecast():
            return {"type": "set_energy_forecast", "energy_forecast": dict(cmd.energy_kwh)}
        case intent.SetEnergyMeasurement():
            return {"type": "set_energy_measurement", "energy_measurement": dict(cmd.energy_kwh)}
        case intent.GridFees():
            data = (
                {"fee_const": cmd.fee_const}
                if cmd.fee_const is not None
                else {"fee_percent": cmd.fee_percent}
            )
            return {"type": "grid_fees", "data": data}
        case intent.DsoMarketStats():
            return {"type": "dso_market_stats", "data": {}}
    raise TypeError(f"not a strategy command: {cmd!r}")


# ---------------------------------------------------------------------------------------------
# Whole-shard order validation (vectorized)

Side = Literal["bid", "offer"]


@dataclass(slots=True)
class OrderCheck:
    """Result of :func:`validate_orders`: a mask of orders to send and a reason for each refusal.

    ``price`` is each order's wire price (total cents), computed once here: the numbers checked
    are the numbers to serialize (``price[ok]``), not recomputed afterwards.
    """

    ok: np.ndarray  # bool per order
    refusals: list[tuple[int, str, str]]  # (order index, "bid"/"offer", reason)
    price: FloatArray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))


def validate_orders(
    kind: np.ndarray,
    is_bid: np.ndarray,
    energy: FloatArray,
    rate: FloatArray,
    requirement: FloatArray,
    available: FloatArray,
    to_buy: FloatArray,
    to_sell: FloatArray,
) -> OrderCheck:
    """The rules of :func:`validate_command` for spot-market orders, over arrays.

    All arrays are per order (the asset's energies already gathered for each order's row).
    Every check is on the final wire values: ``price = rate * energy`` overflows to ``inf`` for
    finite inputs (1e308 kWh at 30 ct/kWh), and is checked after it is computed.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        # + 0.0 turns -0.0 into 0.0: the wire gets a plain zero.
        price = np.asarray(rate * energy, dtype=np.float64) + 0.0
        finite = np.isfinite(energy) & np.isfinite(rate) & np.isfinite(price)
        too_dear = price > MAX_RATE_CT_PER_KWH * energy
    is_storage = kind == AssetKind.STORAGE
    bid_cap = np.where(is_storage, to_buy, requirement)
    offer_cap = np.where(is_storage, to_sell, available) + OFFER_TOLERANCE_KWH
    checks: list[tuple[np.ndarray, str]] = [
        (~finite, "energy and price must be finite"),
        (price < 0, "negative price"),
        (energy <= MIN_ORDER_ENERGY_KWH, f"energy at or below {MIN_ORDER_ENERGY_KWH} kWh"),
        (energy > MAX_ORDER_ENERGY_KWH, f"energy above the bound of {MAX_ORDER_ENERGY_KWH:g} kWh"),
        (price > MAX_ORDER_PRICE_CT, f"price above the bound of {MAX_ORDER_PRICE_CT:g} ct"),
        (too_dear, f"rate above the bound of {MAX_RATE_CT_PER_KWH:g} ct/kWh"),
        (is_bid & (kind == AssetKind.PV), "a PV cannot bid on the spot market"),
        (~is_bid & (kind == AssetKind.LOAD), "a load cannot offer on the spot market"),
        # ~(<=), not >: a NaN requirement or availability refuses the order.
        (is_bid & ~(energy <= bid_cap), "bid energy above the requirement"),
        (~is_bid & ~(energy <= offer_cap), "offer energy above the available energy"),
    ]
    bad = np.zeros(len(energy), dtype=bool)
    refusals: list[tuple[int, str, str]] = []
    for mask, reason in checks:
        fresh = mask & ~bad
        if fresh.any():
            for i in np.flatnonzero(fresh):
                refusals.append((int(i), "bid" if is_bid[i] else "offer", reason))
            bad |= fresh
    return OrderCheck(ok=~bad, refusals=refusals, price=price)
