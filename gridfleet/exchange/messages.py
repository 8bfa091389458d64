"""Typed models of every message of the gsy-e aggregator protocol (``tests/fixtures/protocol``).

Inbound messages are decoded straight from bytes into msgspec structs: one pass, C speed, types
checked, no intermediate dicts. That keeps a 100 000-asset event within a small factor of
``orjson.loads`` (see ``bench/bench_protocol.py``). Optional keys default to ``UNSET`` so that a
message re-encodes to the same JSON it came from: a key that was absent stays absent, a key that
was ``null`` stays ``null``.

Outbound batch commands are strict and live in :mod:`gridfleet.exchange.outbound`.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Struct, UnsetType

Number = float  # msgspec accepts JSON ints for float fields


class _Msg(Struct, kw_only=True):
    """Base of every wire message: keyword-only, unknown keys ignored (newer exchanges add some)."""


# ---------------------------------------------------------------------------------------------
# Aggregator life cycle: aggregator-commands / aggregator-response


class AggregatorCommand(_Msg):
    """``CREATE {name}``; ``SELECT``/``UNSELECT {aggregator_uuid, device_uuid}``; ``DELETE``.

    ``type`` is a plain string: the exchange answers unknown types with an error, so the model
    must be able to carry them.
    """

    type: str
    transaction_id: str
    name: str | UnsetType = UNSET
    aggregator_uuid: str | UnsetType = UNSET
    device_uuid: str | UnsetType = UNSET


class AggregatorResponse(_Msg):
    """Shared by all aggregators; match on ``transaction_id``.

    ``status`` is ``ready`` (CREATE), ``SELECTED``, ``UNSELECTED``, ``deleted`` or ``error``.
    """

    status: str
    transaction_id: str
    name: str | UnsetType = UNSET
    aggregator_uuid: str | UnsetType = UNSET
    device_uuid: str | UnsetType = UNSET
    msg: str | UnsetType = UNSET


# ---------------------------------------------------------------------------------------------
# Registration: <name>/register_participant and its response


class RegisterParticipant(_Msg):
    name: str
    transaction_id: str


class RegisterResponse(_Msg):
    command: str
    status: str
    transaction_id: str
    registered: bool | UnsetType = UNSET
    device_uuid: str | UnsetType = UNSET


# ---------------------------------------------------------------------------------------------
# The grid tree carried by market/tick/trade events


class MarketStats(_Msg):
    min_trade_rate: Number | None = None
    max_trade_rate: Number | None = None
    avg_trade_rate: Number | None = None
    median_trade_rate: Number | None = None
    total_traded_energy_kWh: Number | None = None


class AssetInfo(_Msg):
    """``asset_info`` of one of the aggregator's own assets. Which keys are present tells the kind:
    loads ``energy_requirement_kWh``, PVs ``available_energy_kWh``, storages ``energy_to_buy`` /
    ``energy_to_sell``, smart meters both requirement and availability."""

    energy_requirement_kWh: Number | UnsetType = UNSET
    available_energy_kWh: Number | UnsetType = UNSET
    energy_to_buy: Number | UnsetType = UNSET
    energy_to_sell: Number | UnsetType = UNSET
    used_storage: Number | UnsetType = UNSET
    free_storage: Number | UnsetType = UNSET
    energy_active_in_bids: Number | UnsetType = UNSET
    energy_active_in_offers: Number | UnsetType = UNSET
    energy_traded: Number | UnsetType = UNSET
    total_cost: Number | UnsetType = UNSET
    # Settlement markets: open settled slot -> signed kWh, or null when there is nothing to settle
    # (no measurement yet, no deviation, fully settled). Kept as received, nulls included, so it
    # re-encodes to the same JSON; read it through ``unsettled_deviation_kWh``.
    unsettled_deviation_raw: dict[str, Number | None] | UnsetType | None = msgspec.field(
        default=UNSET, name="unsettled_deviation_kWh"
    )

    @property
    def unsettled_deviation_kWh(self) -> dict[str, Number] | UnsetType | None:
        """The slots with a number to settle (oldest first); the slots gsy-e sent as null are left
        out, since there is nothing to trade there."""
        dev = self.unsettled_deviation_raw
        if not isinstance(dev, dict):
            return dev
        return {slot: kwh for slot, kwh in dev.items() if kwh is not None}


class GridNode(_Msg):
    """One node of ``grid_tree``: a market (``children``, stats, fees), one of the aggregator's
    assets (``asset_info``), or any other leaf (``area_name`` only; the Market Maker among them)."""

    area_name: str
    children: dict[str, GridNode] | UnsetType = UNSET
    last_market_bill: dict[str, Any] | UnsetType | None = UNSET
    last_market_stats: MarketStats | UnsetType | None = UNSET
    last_market_fee: Number | UnsetType | None = UNSET
    current_market_fee: Number | UnsetType | None = UNSET
    asset_info: AssetInfo | UnsetType | None = UNSET
    last_slot_asset_info: dict[str, Any] | UnsetType | None = UNSET
    asset_bill: dict[str, Any] | UnsetType | None = UNSET

    @property
    def is_market(self) -> bool:
        return self.children is not UNSET


GridTree = dict[str, GridNode]


# ---------------------------------------------------------------------------------------------
# Events on external-aggregator//<aggregator_uuid>/events/all (tagged by "event")


class _TreeEvent(_Msg, kw_only=True):
    grid_tree: GridTree
    feed_in_tariff_rate: Number | None = None
    market_maker_rate: Number | None = None
    simulation_id: str | None = None
    num_ticks: Number = 10


class MarketEvent(_TreeEvent, tag_field="event", tag="market"):
    """A new market slot opened. Arrives together with the 0 % tick."""

    slot_completion: str
    market_slot: str


class TickEvent(_TreeEvent, tag_field="event", tag="tick"):
    """Every 10 % of a slot. In the very first slot the tree is empty and the rates are null."""

    slot_completion: str
    market_slot: str


class Trade(_Msg):
    asset_id: str
    trade_id: str
    trade_price: Number  # total cents
    traded_energy: Number  # kWh
    seller: str
    buyer: str
    event: str | UnsetType = UNSET
    time: str | UnsetType = UNSET
    total_fee: Number | UnsetType = UNSET
    local_market_fee: Number | str | UnsetType = UNSET
    seller_origin: str | UnsetType = UNSET
    buyer_origin: str | UnsetType = UNSET
    bid_id: str | UnsetType = UNSET
    offer_id: str | UnsetType = UNSET
    residual_bid_id: str | UnsetType = UNSET
    residual_offer_id: str | UnsetType = UNSET


class TradeEvent(_TreeEvent, tag_field="event", tag="trade"):
    """Trades of the aggregator's assets; carries the tree too (update state, do not evaluate)."""

    trade_list: list[Trade]


class TradeEventLite(_Msg, tag_field="event", tag="trade"):
    """A trade event without its tree: what ingress needs (the tree is skipped, not built)."""

    trade_list: list[Trade]


class FinishEvent(_Msg, tag_field="event", tag="finish"):
    simulation_id: str | None = None
    num_ticks: Number | UnsetType = UNSET


class _TreeEventHead(_Msg, kw_only=True):
    """A market/tick event with its tree kept as raw JSON (checked to be well-formed, not built)."""

    grid_tree: msgspec.Raw
    feed_in_tariff_rate: Number | None = None
    market_maker_rate: Number | None = None
    simulation_id: str | None = None
    num_ticks: Number = 10

    @property
    def has_tree(self) -> bool:
        """False for the first slot's ``{}`` (and for ``null``): nothing to evaluate."""
        raw = self.grid_tree
        return len(raw) > 4 or bytes(raw).replace(b" ", b"") not in (b"{}", b"null", b"")


class MarketEventHead(_TreeEventHead, tag_field="event", tag="market"):
    slot_completion: str
    market_slot: str


class TickEventHead(_TreeEventHead, tag_field="event", tag="tick"):
    slot_completion: str
    market_slot: str


AggregatorEvent = MarketEvent | TickEvent | TradeEvent | FinishEvent
IngressEvent = MarketEventHead | TickEventHead | TradeEventLite | FinishEvent
"""What ingress decodes: the round's key and rates, not the trees. Workers parse each tree (in
parallel); trade events carry the whole tree again, which ingress skips too."""


def slot_tick_index(slot_completion: str) -> int:
    """``"30%"`` -> 3: the tick index the SDK's templates use (``int(completion / 10)``)."""
    return int(float(slot_completion.rstrip("%")) // 10)


# ---------------------------------------------------------------------------------------------
# Per-asset and per-market event channels (<name>/events/<market|tick|finish>)


class AssetMarketEvent(_Msg, tag_field="event", tag="market"):
    name: str
    id: str
    start_time: str
    duration_min: int
    time_slots: list[str]
    type_name: str
    area_uuid: str
    device_info: dict[str, Any] | None = None
    device_bill: dict[str, Any] | None = None
    last_market_maker_rate: Number | None = None
    last_market_stats: MarketStats | None = None


class AssetTickEvent(_Msg, tag_field="event", tag="tick"):
    slot_completion: str
    market_slot: str
    area_uuid: str
    device_info: dict[str, Any] | None = None


class AreaFinishEvent(_Msg, tag_field="event", tag="finish"):
    area_uuid: str | UnsetType = UNSET


DirectEvent = AssetMarketEvent | AssetTickEvent | AreaFinishEvent


# ---------------------------------------------------------------------------------------------
# Batches: external-aggregator//batch_commands and .../<uuid>/response/batch_commands


class BatchCommands(_Msg):
    """A BATCHED message as it travels. Commands stay raw dicts here: this is what an exchange
    receives, malformed commands included. What gridfleet *sends* is built and validated by
    :mod:`gridfleet.exchange.outbound`."""

    transaction_id: str
    aggregator_uuid: str
    batch_commands: dict[str, list[dict[str, Any]]]
    type: Literal["BATCHED"] = "BATCHED"


class CommandResponse(_Msg):
    """One answer in ``responses[asset_uuid]``: ``status`` is ``ready`` or ``error``.

    Which other keys appear depends on the command: ``bid``/``offer`` (the order, as a JSON string),
    ``deleted_bids``, ``bid_list``, ``device_info``, ``market_stats``, ``market_fee_const``...
    Errors carry ``error_message`` (rejected order) or ``message`` (unknown or missing type).
    """

    status: str
    command: str | UnsetType = UNSET
    area_uuid: str | UnsetType = UNSET
    transaction_id: str | UnsetType = UNSET
    market_type: str | UnsetType = UNSET
    message: str | UnsetType = UNSET
    error_message: str | UnsetType = UNSET
    bid: str | UnsetType = UNSET
    offer: str | UnsetType = UNSET
    deleted_bids: list[Any] | UnsetType = UNSET
    deleted_offers: list[Any] | UnsetType = UNSET
    bid_list: list[dict[str, Any]] | UnsetType = UNSET
    offer_list: list[dict[str, Any]] | UnsetType = UNSET
    device_info: dict[str, Any] | UnsetType = UNSET
    market_stats: dict[str, Any] | UnsetType = UNSET
    name: str | UnsetType = UNSET
    market_fee_const: str | UnsetType = UNSET
    market_fee_percent: str | UnsetType = UNSET

    @property
    def ok(self) -> bool:
        return self.status == "ready"

    @property
    def reason(self) -> str:
        """The exchange's own words for an error (empty for ``ready``)."""
        for text in (self.error_message, self.message):
            if isinstance(text, str) and text:
                return text
        return ""


class BatchResponse(_Msg):
    command: str
    transaction_id: str
    aggregator_uuid: str
    responses: dict[str, list[CommandResponse]]


# ---------------------------------------------------------------------------------------------
# Heartbeat and simulation control


class Heartbeat(_Msg):
    time: Number


class SimControl(_Msg):
    """``/pause``, ``/resume``, ``/stop``."""

    transaction_id: str


class SimControlResponse(_Msg):
    command: str
    transaction_id: str
    status: str
    simulation_id: str | UnsetType | None = UNSET


# ---------------------------------------------------------------------------------------------
# Decoding and encoding

_T = TypeVar("_T")

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()


class ProtocolError(ValueError):
    """An inbound message that does not match the protocol; says which model and where."""


def decode(raw: bytes | str, model: type[_T]) -> _T:
    """Decode one JSON message into ``model`` (a struct class or a union of them)."""
    dec = _decoders.get(model)
    if dec is None:
        dec = _decoders[model] = msgspec.json.Decoder(model)
    try:
        return dec.decode(raw)
    except msgspec.ValidationError as exc:
        name = getattr(model, "__name__", str(model))
        raise ProtocolError(f"not a valid {name}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not valid JSON: {exc}") from exc


def decode_event(raw: bytes | str) -> AggregatorEvent:
    """Decode a message from an aggregator's ``events/all`` channel."""
    return decode(raw, AggregatorEvent)  # type: ignore[arg-type]


def decode_event_for_ingress(raw: bytes | str) -> IngressEvent:
    """Like :func:`decode_event`, but every tree is skipped.

    A market or tick event laid out as gsy-e sends it (the slot and completion first, then the
    tree, then the rates) has its tree cut out by position and only the ~200 bytes around it
    decoded: 2 ms for a 100 000-asset round of 32 MB. Such a tree is not checked to be
    well-formed JSON here; the worker that parses it skips its aggregator if it is not. Any
    other event is decoded whole with the tree scanned, not built (20 ms for the same round).
    """
    if isinstance(raw, bytes):
        event = _cut_tree_event(raw)
        if event is not None:
            return event
    return decode(raw, IngressEvent)  # type: ignore[arg-type]


_TREE_EVENT_HEAD = re.compile(
    rb'\{\s*"slot_completion"\s*:\s*"[^"\\]*"\s*,\s*"market_slot"\s*:\s*"[^"\\]*"\s*,'
    rb'\s*"grid_tree"\s*:\s*'
)
_TREE_EVENT_TAIL = b',"feed_in_tariff_rate":'
_head_decoder: msgspec.json.Decoder[MarketEventHead | TickEventHead] = msgspec.json.Decoder(
    MarketEventHead | TickEventHead
)


def _cut_tree_event(raw: bytes) -> MarketEventHead | TickEventHead | None:
    """The event with its tree cut out by position; None if it is not laid out as expected.

    The tree is what lies between the head and the last ``,"feed_in_tariff_rate":``. Were that
    key inside the tree too (and not after it), what follows the cut would not close the event
    as one JSON object and the head would not decode: the caller decodes the event whole.
    """
    head = _TREE_EVENT_HEAD.match(raw)
    if head is None:
        return None
    start, stop = head.end(), raw.rfind(_TREE_EVENT_TAIL)
    if stop <= start:
        return None
    first, last = raw[start : start + 1], raw[stop - 1 : stop]
    if last.isspace():
        last = raw[start:stop].rstrip()[-1:]
    if not (first == b"{" and last == b"}") and raw[start:stop].strip() != b"null":
        return None  # not an object: the whole decode says what it is
    try:
        event = _head_decoder.decode(raw[:start] + b"null" + raw[stop:])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    # A view, not a copy: the event's bytes stay alive with the tree.
    return msgspec.structs.replace(event, grid_tree=msgspec.Raw(memoryview(raw)[start:stop]))


def model_for_channel(channel: str) -> Any:
    """The model (or tagged union) of messages on ``channel``; raises ProtocolError if unknown."""
    if channel == "aggregator-commands":
        return AggregatorCommand
    if channel == "aggregator-response":
        return AggregatorResponse
    if channel == "gsy-e-heartbeat/":
        return Heartbeat
    if channel.startswith("external-aggregator/"):
        if channel.endswith("/events/all"):
            return AggregatorEvent
        if channel.endswith("/response/batch_commands"):
            return BatchResponse
        if channel.endswith("/batch_commands"):
            return BatchCommands
    if channel.endswith("/response/register_participant"):
        return RegisterResponse
    if channel.endswith("/register_participant"):
        return RegisterParticipant
    tail = channel.rsplit("/", 1)[-1]
    if "/response/" in channel and tail in ("pause", "resume", "stop"):
        return SimControlResponse
    if channel.count("/") <= 1 and tail in ("pause", "resume", "stop"):
        return SimControl
    if "/events/" in channel and tail in ("market", "tick", "finish"):
        return DirectEvent
    raise ProtocolError(f"no protocol model for channel {channel!r}")


def decode_message(channel: str, raw: bytes | str) -> Any:
    """Decode a message by the channel it arrived on."""
    return decode(raw, model_for_channel(channel))


def encode(msg: Struct) -> bytes:
    """Encode a protocol struct to JSON bytes (absent optional keys stay absent)."""
    return _encoder.encode(msg)


def to_builtins(msg: Struct) -> Any:
    """A protocol struct as plain dicts and lists (for tests and logs)."""
    return msgspec.to_builtins(msg)
