"""Apply BATCHED messages to the exchange state and build gsy-e's per-command responses.

Response shapes follow ``tests/fixtures/protocol/examples/07_*`` key for key. Inputs are untrusted
JSON: every malformed command gets an error response (the real exchange dies on five of them,
``11_CRASH_*``); nothing here raises on bad input.

:meth:`BatchHandler.respond_many` is what the engine calls: the fast path for the common order
shapes, the general path (:meth:`BatchHandler.command`, the original per-command code) for
everything else, answers serialised. :meth:`BatchHandler.handle` is the general path alone,
returning dicts.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Collection, Sequence
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter
from typing import Any, cast

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from msgspec.structs import asdict

from gridfleet.simulator.arrow_text import fixed, floats, join, spans, texts, warm_up
from gridfleet.simulator.batch_decode import Order, Typed
from gridfleet.simulator.door import Payload, Pieces, payload_bytes
from gridfleet.simulator.grid import LOAD, PV, STORAGE
from gridfleet.simulator.numfmt import hex12s, reprs_b, round8
from gridfleet.simulator.registry import AggregatorRegistry
from gridfleet.simulator.settlement import SETTLEMENT_MARKET, OrderRefused, parse_time_slot
from gridfleet.simulator.state import (
    MIN_ENERGY_KWH,
    OFFER_TOLERANCE_KWH,
    REPORT_ROUNDING_KWH,
    SPOT_ORDER_ID_PREFIX,
    ExchangeState,
)

SPOT = "Spot Market"
ORDER_KEYS = frozenset(
    {"price", "energy", "type", "transaction_id", "replace_existing", "time_slot"}
)
ASSET = 0
MARKET = 1
_INT_MAX = 2**53  # ints the fast path takes: exact as float64

Response = dict[str, Any]
# (batch: as orjson reads it, or of the common shape, decoded strictly; sender's devices; sender)
BatchItem = tuple[dict[str, Any] | Typed, Collection[str], Any]
# a device of a batch: (uuid, ASSET|MARKET, index, commands, first candidate or -1: general path)
_Device = tuple[str, int, int, list[Any], int]
# a batch: (envelope head or b"": general path, transaction id as JSON, batch, its devices)
_Head = tuple[bytes, str, Any, list[_Device]]
# a fast-path order: (asset, is bid, energy, price, replace_existing, bad time_slot)
_Candidate = tuple[int, bool, Any, Any, bool, bool]
# a fast-path batch: (first candidate, end candidate, every device fast, commands answered)
_Span = tuple[int, int, bool, int]
# a batch's devices that are the sender's: (uuids, kinds, indices, their assets), in order
_Found = tuple[list[str], list[int], list[int], set[int]]

_NOT_A_DICT: dict[str, Any] = {}  # stands in for a command that is not an object: fails every check
_Q = '\\"'  # a quote inside the order's rendering, itself a JSON string
_E_K = f"{_Q}, {_Q}energy{_Q}: ".encode()
_R_K = f", {_Q}energy_rate{_Q}: ".encode()
_P_K = f", {_Q}price{_Q}: ".encode()
_O_K = f", {_Q}original_price{_Q}: ".encode()
_OID = f"{_Q}id{_Q}: {_Q}{SPOT_ORDER_ID_PREFIX}"
# the opening of a ready answer, by side
_OPEN_OFFER = f'{{"command":"offer","status":"ready","offer":"{{{_Q}type{_Q}: {_Q}Offer{_Q}, {_OID}'
_OPEN_BID = f'{{"command":"bid","status":"ready","bid":"{{{_Q}type{_Q}: {_Q}Bid{_Q}, {_OID}'
_BID_END = b',"market_type":"Spot Market","message":""}'


class _Cands:
    """The fast-path candidates of a chunk as columns, in command order."""

    def __init__(self) -> None:
        self.m = 0
        self.idx = np.zeros(0, dtype=np.int64)  # asset
        self.is_b = np.zeros(0, dtype=bool)
        self.en = np.zeros(0)
        self.pr = np.zeros(0)
        self.rep = np.zeros(0, dtype=bool)  # replace_existing
        self.late = np.zeros(0, dtype=bool)  # names the closing slot in time_slot
        self.prices: list[Any] = []  # the price objects as sent (int or float)
        self.int_price = False  # an int among them
        self.first = np.zeros(0, dtype=bool)  # first command of its device
        self.last = np.zeros(0, dtype=bool)  # last command of its device
        self.dev = np.zeros(0, dtype=np.int64)  # device (position in the chunk's devices)
        self.q = np.zeros(0, dtype=np.int64)  # position in its device's command list
        self.batch = np.zeros(0, dtype=np.int64)  # its batch (position in the items)
        self.pos = np.zeros(0, dtype=np.int64)  # its device's position in the batch's plan


class _Checked:
    """The candidates and which of them passed the checks."""

    def __init__(self, cands: _Cands, good: np.ndarray) -> None:
        self.cands = cands
        self.m = cands.m
        self.good = good
        self.acc = np.flatnonzero(good)
        self.n_acc = len(self.acc)
        # accepted orders before candidate j: rows are numbered in command order
        self.acc_before: list[int] = np.concatenate(([0], np.cumsum(good))).tolist()


class _General:
    """What the general path answered and how many rows it added where."""

    def __init__(self) -> None:
        # per batch: its whole answer (general-path batch, or no answer), None: assembled later
        self.results: list[tuple[bytes | None, int] | Exception | None] = []
        self.answers: dict[tuple[int, int], bytes] = {}  # (batch, device) -> its responses' JSON
        self.shift: list[tuple[int, int]] = []  # (accepted orders before, extra rows from there)
        self.extra = 0  # rows the general path added in all


def _envelope_head(tid: Any, aggregator: Any) -> tuple[bytes, str]:
    """The answer's envelope up to its responses, and the transaction id as JSON; ``b""`` when
    they are not serialisable (the general path then raises where the original did)."""
    try:
        head = orjson.dumps(
            {
                "command": "batch_commands",
                "transaction_id": tid,
                "aggregator_uuid": aggregator,
                "responses": {},
            }
        )[:-2]
        return head, orjson.dumps(tid).decode()
    except TypeError:
        return b"", ""


def _device_plan(
    mine: list[tuple[str, tuple[int, int]]],
    commands: dict[str, Any],
    kinds: list[int],
    cand: list[_Candidate],
    slot_now: str,
    closing: bool,
) -> list[_Device]:
    """One batch's devices (``mine``: the sender's, in order): the shape checks of
    :meth:`BatchHandler.order` per command, each fast device's orders appended to ``cand``; a
    device whose commands do not all fit takes the general path (start -1).

    The definition, one command at a time, of what :func:`_bulk_plan` does for a whole chunk
    (tests/simulator/test_batch_bulk.py holds them to the same result)."""
    issuperset = ORDER_KEYS.issuperset
    plan: list[_Device] = []
    for uuid, (kind, a) in mine:
        cmds = commands[uuid]
        if type(cmds) is not list:
            cmds = cmds if isinstance(cmds, list) else [cmds]
        start = len(cand)
        ok = kind == ASSET and 0 < len(cmds) <= 2
        if ok:
            k = kinds[a]
            sides = 0
            for c in cmds:
                if type(c) is not dict or not issuperset(c):
                    ok = False
                    break
                t = c.get("type")
                if t == "bid":
                    if k == PV or sides & 1:
                        ok = False
                        break
                    sides |= 1
                    is_bid = True
                elif t == "offer":
                    if k == LOAD or sides & 2:
                        ok = False
                        break
                    sides |= 2
                    is_bid = False
                else:
                    ok = False
                    break
                e: Any = c.get("energy")
                p: Any = c.get("price")
                te, tp = type(e), type(p)
                if not (
                    (te is float and e - e == 0.0) or (te is int and -_INT_MAX < e < _INT_MAX)
                ) or not (
                    (tp is float and p - p == 0.0) or (tp is int and -_INT_MAX < p < _INT_MAX)
                ):
                    ok = False
                    break
                slot = c.get("time_slot")
                if slot is not None and (not isinstance(slot, str) or slot[:16] != slot_now):
                    ok = False  # another market (settlement) or none: the general path says
                    break
                cand.append(
                    (
                        a,
                        is_bid,
                        e,
                        p,
                        c.get("replace_existing", True) is not False,
                        slot is not None and closing,
                    )
                )
            if not ok:
                del cand[start:]
        plan.append((uuid, kind, a, cmds, start if ok else -1))
    return plan


def _numbers(values: list[Any]) -> tuple[np.ndarray, np.ndarray, bool]:
    """The values as float64, which of them the fast path cannot take (anything but a finite
    float or an int within 2**53), and whether an int is among them."""
    types = set(map(type, values))
    if types == {float}:
        arr = np.array(values, dtype=np.float64)
        return arr, ~np.isfinite(arr), False
    good = [
        (type(v) is float and v - v == 0.0) or (type(v) is int and -_INT_MAX < v < _INT_MAX)
        for v in values
    ]
    arr = np.array([v if g else 0.0 for v, g in zip(values, good, strict=True)], dtype=np.float64)
    return arr, ~np.array(good, dtype=bool), int in types


class _Fields:
    """The fields the fast path reads of a chunk's commands, as columns in command order, and
    which commands fail the key and type checks."""

    def __init__(self, m: int) -> None:
        self.bad = np.zeros(m, dtype=bool)
        self.is_b = np.zeros(m, dtype=bool)  # type "bid"
        self.is_o = np.zeros(m, dtype=bool)  # type "offer"
        self.en = np.zeros(m)
        self.pr = np.zeros(m)
        self.prices: list[Any] = []  # the price objects as sent
        self.int_price = False  # an int among them
        self.slots: list[Any] = []  # time_slot (None: absent or null)
        self.rep = np.zeros(m, dtype=bool)  # replace_existing is not False


def _dict_fields(flat: list[Any]) -> _Fields:
    """The fields of commands as orjson reads them: :meth:`BatchHandler.order`'s key and type
    checks as a few C-level passes."""
    m = len(flat)
    f = _Fields(m)
    if set(map(type, flat)) != {dict}:
        f.bad = np.fromiter((type(c) is not dict for c in flat), dtype=bool, count=m)
        flat = [c if type(c) is dict else _NOT_A_DICT for c in flat]
    f.bad |= ~np.fromiter(map(ORDER_KEYS.issuperset, flat), dtype=bool, count=m)
    get = dict.get
    ty = list(map(get, flat, repeat("type")))
    f.is_b = np.fromiter(map(operator.eq, ty, repeat("bid")), dtype=bool, count=m)
    f.is_o = np.fromiter(map(operator.eq, ty, repeat("offer")), dtype=bool, count=m)
    f.prices = list(map(get, flat, repeat("price")))
    f.en, en_bad, _ = _numbers(list(map(get, flat, repeat("energy"))))
    f.pr, pr_bad, f.int_price = _numbers(f.prices)
    f.bad |= en_bad | pr_bad
    f.slots = list(map(get, flat, repeat("time_slot")))
    f.rep = np.fromiter(
        map(
            operator.is_not,
            map(get, flat, repeat("replace_existing"), repeat(True)),
            repeat(False),
        ),
        dtype=bool,
        count=m,
    )
    return f


_TYPE = attrgetter("type")
_ENERGY = attrgetter("energy")
_PRICE = attrgetter("price")
_SLOT = attrgetter("time_slot")
_REPLACE = attrgetter("replace_existing")


def _order_fields(flat: list[Order]) -> _Fields:
    """The same of :class:`Order` structs: their decoder did the key and type checks (a bid or an
    offer, finite numbers, ints within 2**53, a bool ``replace_existing``)."""
    m = len(flat)
    f = _Fields(m)
    f.is_b = np.fromiter(map(operator.eq, map(_TYPE, flat), repeat("bid")), dtype=bool, count=m)
    f.is_o = ~f.is_b
    f.en = np.fromiter(map(_ENERGY, flat), dtype=np.float64, count=m)
    f.prices = list(map(_PRICE, flat))
    f.pr = np.array(f.prices, dtype=np.float64)
    # an int price is a whole number: only those need a look at their type
    f.int_price = any(
        type(f.prices[i]) is int for i in np.flatnonzero(f.pr == np.floor(f.pr)).tolist()
    )
    f.slots = list(map(_SLOT, flat))
    f.rep = np.fromiter(map(_REPLACE, flat), dtype=bool, count=m)
    return f


def _bulk_plan(
    vals: list[Any],
    kinds: list[int],
    assets: list[int],
    kind_of: np.ndarray,
    slot_now: str,
    closing: bool,
    typed: bool | None = False,
) -> tuple[list[Any], np.ndarray, np.ndarray, _Cands]:
    """:func:`_device_plan` for the devices of a whole chunk at once (their command lists
    ``vals``, kinds and indices, in order): the shape checks as a few C-level passes
    (``map`` over the commands) and numpy over every command. ``typed``: True when every
    command list is the strict decoder's (of :class:`Order` structs), None when some are.

    Returns the command lists (a lone command wrapped in a list, as the general path does),
    the number of commands per device, each device's first candidate (-1: general path) and the
    candidates, numbered in command order over the fast devices."""
    n = len(vals)
    if n and not typed and set(map(type, vals)) != {list}:
        vals = [v if type(v) is list else (v if isinstance(v, list) else [v]) for v in vals]
    lens = np.fromiter(map(len, vals), dtype=np.int64, count=n)
    starts = np.full(n, -1, dtype=np.int64)
    cands = _Cands()
    if n == 0:
        return vals, lens, starts, cands
    kd = np.fromiter(kinds, dtype=np.int64, count=n)
    ad = np.fromiter(assets, dtype=np.int64, count=n)
    ok = (kd == ASSET) & (lens >= 1) & (lens <= 2)
    okd = np.flatnonzero(ok)
    flat: list[Any] = list(chain.from_iterable(compress(vals, ok.tolist())))
    m = len(flat)
    if m == 0:
        return vals, lens, starts, cands
    cl = lens[okd]
    dev = np.repeat(okd, cl)  # device of each command
    seg = np.zeros(len(okd), dtype=np.int64)  # each device's first command
    np.cumsum(cl[:-1], out=seg[1:])
    if typed is None:  # structs among dicts: as dicts, which read the same for these checks
        flat = [asdict(c) if type(c) is Order else c for c in flat]
    f = _order_fields(flat) if typed else _dict_fields(flat)
    bad, is_b, is_o = f.bad, f.is_b, f.is_o
    k = kind_of[ad[dev]]
    bad |= ~(is_b | is_o) | (is_b & (k == PV)) | (is_o & (k == LOAD))
    two = seg[cl == 2]
    bad[two + 1] |= is_b[two] == is_b[two + 1]  # two bids or two offers
    late = np.zeros(m, dtype=bool)
    if f.slots.count(None) != m:
        for j, s in enumerate(f.slots):
            if s is not None:
                if isinstance(s, str) and s[:16] == slot_now:
                    late[j] = closing
                else:
                    bad[j] = True  # another market (settlement) or none: the general path says
    dev_bad = np.logical_or.reduceat(bad, seg)
    fast = okd[~dev_bad]
    fl = lens[fast]
    starts[fast] = np.cumsum(fl) - fl
    keep = np.repeat(~dev_bad, cl)
    q = np.arange(m, dtype=np.int64) - np.repeat(seg, cl)
    cands.m = int(keep.sum())
    cands.dev = dev[keep]
    cands.idx = ad[cands.dev]
    cands.is_b, cands.en, cands.pr = is_b[keep], f.en[keep], f.pr[keep]
    cands.rep, cands.late = f.rep[keep], late[keep]
    cands.prices = f.prices if cands.m == m else list(compress(f.prices, keep.tolist()))
    cands.int_price = f.int_price and any(type(p) is int for p in cands.prices)
    cands.q = q[keep]
    cands.first = cands.q == 0
    cands.last = cands.q == lens[cands.dev] - 1
    return vals, lens, starts, cands


def _as_sent(batch: dict[str, Any] | Typed, uuid: str, cmds: list[Any]) -> list[Any]:
    """A device's commands as orjson reads them (those of a strictly decoded batch are structs,
    which lack the keys' order an error answer quotes)."""
    return batch.as_dict()["batch_commands"][uuid] if type(batch) is Typed else cmds


def _placed(is_bid: bool, rendered: str, uuid: str, tid: Any, market_type: str) -> Response:
    """gsy-e's ``ready`` answer to a placed bid or offer (its keys in gsy-e's order)."""
    if is_bid:
        return {
            "command": "bid",
            "status": "ready",
            "bid": rendered,
            "area_uuid": uuid,
            "transaction_id": tid,
            "market_type": market_type,
            "message": "",
        }
    return {
        "command": "offer",
        "status": "ready",
        "offer": rendered,
        "transaction_id": tid,
        "area_uuid": uuid,
        "market_type": market_type,
        "message": "",
    }


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# by is bid: the opening of the answer; by is last of its device: what closes the device's list
_OPENING = texts([_OPEN_OFFER.encode(), _OPEN_BID.encode()])
_TRAIL = texts([b"", b"]"])


class _AssetPieces:
    """The constant pieces of every asset's ready answers, as Arrow columns (by asset)."""

    def __init__(self, state: ExchangeState) -> None:
        q = _Q
        lead, clead, tail_b, tail_o, end_o = [], [], [], [], []
        for a, uuid in enumerate(state.grid.asset_uuid):
            esc = orjson.dumps(state.party(a)).decode()[1:-1]
            ujs = orjson.dumps(uuid).decode()
            lead.append(f"{ujs}:[".encode())
            clead.append(f",{ujs}:[".encode())
            tail_b.append(f'{q}buyer{q}: {esc}}}","area_uuid":{ujs},"transaction_id":'.encode())
            tail_o.append(f'{q}seller{q}: {esc}}}","transaction_id":'.encode())
            end_o.append(f',"area_uuid":{ujs},"market_type":"Spot Market","message":""}}'.encode())
        self.n = len(lead)
        # by asset a: ``,"<uuid>":[`` at a, ``"<uuid>":[`` at n + a, and a lone comma at 2n
        self.sep = texts([*clead, *lead, b","])
        # the seller up to the transaction id at a, the buyer at n + a
        self.tail = texts([*tail_o, *tail_b])
        # an offer's answer after the transaction id at a, a bid's at n
        self.end = texts([*end_o, _BID_END])
        warm_up()  # each Arrow kernel's first call costs ms: here, not in the first round


class _Answers:
    """The fast-path answers of a chunk, one Arrow row per candidate; a range of candidates
    is one contiguous range of bytes."""

    def __init__(self, rows: pa.Array | None) -> None:
        if rows is None:
            self._at, self._data = np.zeros(1, dtype=np.int64), memoryview(b"")
        else:
            self._at, self._data = spans(rows)

    def range(self, lo: int, hi: int) -> memoryview:
        """Candidates ``lo`` to ``hi`` (excluded), their answers' bytes one after the other."""
        return self._data[int(self._at[lo]) : int(self._at[hi])]


class BatchHandler:
    """Turns commands into state changes and responses. ``devices`` maps uuid -> (ASSET|MARKET, index)."""

    def __init__(self, state: ExchangeState, devices: dict[str, tuple[int, int]]) -> None:
        self.state = state
        self.devices = devices
        self.sim_time = state.slot_start.strftime("%Y-%m-%dT%H:%M:%S")
        # Set once the slot's 90 % tick went out: gsy-e then refuses orders that name the
        # closing slot in ``time_slot`` (07_batch_response_late_at_90pct_current_slot), while
        # orders without ``time_slot`` still land in the open market.
        self.closing = False
        # False: every command takes the general path (:meth:`command`); the reference for the
        # fast path and the "before" figure of the benchmark.
        self.fast = True
        self._pieces = _AssetPieces(state)  # per asset, the constant pieces of its answers
        self._ujs: dict[str, bytes] = {}  # device uuid -> as JSON
        # The registry whose version changes with every selection; set (by the engine's
        # intake), which of the devices a sender names are its own is remembered per sender
        # while the version stays (see _devices_of).
        self.selections: AggregatorRegistry | None = None
        # per sender: its selection, the uuids its last batch named, what _devices_of found
        self._known: dict[str, tuple[Collection[str], list[str], *_Found]] = {}
        self._named: dict[str, int] = {}  # per sender: hash of the uuids its last batch named
        self._known_version: int | None = None  # the selection version they are valid for
        # Per aggregator, its selected devices as the engine's selection last synced them
        # (:attr:`Selection.own_devices`): one small map to look a batch's uuids up in, valid
        # while the aggregator is not among the registry's ``changed`` ones.
        self.own_devices: dict[str, dict[str, tuple[int, int]]] = {}

    # ------------------------------------------------------------------ whole batches

    def respond(
        self, batch: dict[str, Any] | Typed, selected: Collection[str], aggregator: Any
    ) -> tuple[bytes | None, int]:
        """Apply one BATCHED message: see :meth:`respond_many`."""
        result = self.respond_many([(batch, selected, aggregator)])[0]
        if isinstance(result, Exception):
            raise result
        answer, n = result
        return (None if answer is None else payload_bytes(answer)), n

    def respond_many(
        self, items: Sequence[BatchItem], pieces: bool = False
    ) -> list[tuple[Payload | None, int] | Exception]:
        """Apply BATCHED messages ``(batch, sender's selected devices, sender uuid)`` in order;
        a batch is what orjson reads, or a :class:`Typed` (the common shape, decoded strictly:
        its orders skip the key and type checks, and the general path reads its dicts).

        For each: its serialised ``batch_commands`` answer (None: no answer) and the number of
        commands answered, or the exception the original code raised while answering it (a
        transaction id orjson cannot serialise). ``pieces``: a fast-path answer is left in
        :class:`~gridfleet.simulator.door.Pieces` (its envelope around its commands' answers,
        as rendered), for an outbox that writes them without joining; else ``bytes``. The
        bytes are exactly ``orjson.dumps`` of the
        envelope around :meth:`handle`'s responses, and the state ends up exactly as if
        :meth:`handle` had run on each batch in turn (tests/simulator/test_batch_fast.py checks
        both against the original code).

        Fast path: a device whose commands have the common shape (a bid and/or an offer with
        energy, price and optionally ``replace_existing`` / ``time_slot``) has its orders
        checked with numpy together with every other such device of ``items`` (the shape
        checks too: :func:`_bulk_plan`); the accepted orders are written to the order columns
        in bulk and answered from byte templates with their numbers rendered in bulk. Every
        other device takes the general path (:meth:`command`), devices in order. Devices of
        different assets share no state, so only the order ids (rows, in command order) tie
        them; a batch naming an asset that an earlier batch of ``items`` named starts a new
        round of this, so it sees that batch's effect. Which devices a sender names are its own is
        remembered per sender while the version of :attr:`selections` stays.
        """
        version = None if self.selections is None else self.selections.version
        if version != self._known_version:
            self._known.clear()
            self._named.clear()
            self._known_version = version
        heads, spans, cands, cut = self._plan(items)
        checked = self._check(cands)
        row0 = self.state.n_rows
        general = self._run_general(items, heads, spans, checked, row0)
        answers = self._place(heads, checked, general, row0)
        out = self._assemble(heads, spans, general, answers, pieces)
        if cut < len(items):
            out.extend(self.respond_many(items[cut:], pieces))
        return out

    def _plan(self, items: Sequence[BatchItem]) -> tuple[list[_Head], list[_Span], _Cands, int]:
        """Decode the batches: per batch its head and device plan (and, fast-path batches, its
        span of candidates), the fast-path candidates, and where to cut ``items`` (the first
        batch naming an asset an earlier one named)."""
        st = self.state
        heads: list[_Head] = []
        seen: set[int] = set()
        cut = len(items)
        # the devices of every fast-path batch, in order; per such batch its devices' range
        d_keys: list[str] = []
        d_vals: list[Any] = []
        d_kinds: list[int] = []
        d_idx: list[int] = []
        ranges: list[tuple[int, int, int]] = []  # (batch, first device, end device)
        n_typed = sum(type(b) is Typed for b, _, _ in items)
        for bi, (batch, selected, aggregator) in enumerate(items):
            commands = batch.commands if type(batch) is Typed else batch.get("batch_commands")
            if not isinstance(commands, dict):
                heads.append((b"", "", None, []))
                continue
            keys, kinds, idxs, assets = self._devices_of(commands, selected, aggregator)
            if not seen.isdisjoint(assets):
                cut = bi
                break
            seen |= assets
            head, tid_js = _envelope_head(batch.get("transaction_id"), aggregator)
            if not self.fast or not head:
                heads.append((b"", "", batch, []))
                continue
            heads.append((head, tid_js, batch, []))
            ranges.append((bi, len(d_keys), len(d_keys) + len(keys)))
            d_keys += keys
            # every device named is the sender's (the common case): its values, without lookups
            d_vals += (
                commands.values() if len(keys) == len(commands) else map(commands.__getitem__, keys)
            )
            d_kinds += kinds
            d_idx += idxs
        typed = n_typed == len(items) or (None if n_typed else False)  # all, some (None), none
        vals, lens, starts, cands = _bulk_plan(
            d_vals, d_kinds, d_idx, st.grid.kind, st.market_slot, self.closing, typed
        )
        spans: list[_Span] = [(0, 0, False, 0)] * len(heads)
        if ranges:
            starts_l = starts.tolist()
            n_dev = len(d_keys)
            r = np.array(ranges, dtype=np.int64)
            dev_batch = np.repeat(np.arange(len(ranges)), r[:, 2] - r[:, 1])
            n_cmds = np.bincount(dev_batch, weights=lens, minlength=len(ranges)).tolist()
            n_gen = np.bincount(dev_batch[starts < 0], minlength=len(ranges)).tolist()
            # fast candidates before each batch's first device
            fast_len = np.where(starts >= 0, lens, 0)
            before = np.concatenate(([0], np.cumsum(fast_len))).tolist()
            for ri, (bi, lo, hi) in enumerate(ranges):
                head, tid_js, batch, _ = heads[bi]
                plan = list(
                    zip(
                        d_keys[lo:hi],
                        d_kinds[lo:hi],
                        d_idx[lo:hi],
                        vals[lo:hi],
                        starts_l[lo:hi],
                        strict=True,
                    )
                )
                heads[bi] = (head, tid_js, batch, plan)
                spans[bi] = (before[lo], before[hi], n_gen[ri] == 0, int(n_cmds[ri]))
            first_dev = np.repeat(r[:, 1], r[:, 2] - r[:, 1])
            cands.batch = r[:, 0][dev_batch][cands.dev]
            cands.pos = (np.arange(n_dev) - first_dev)[cands.dev]
        return heads, spans, cands, cut

    def _devices_of(
        self, commands: dict[str, Any], selected: Collection[str], sender: Any
    ) -> _Found:
        """The sender's devices among those ``commands`` names, in order (unknown ones and
        others' are dropped silently, like gsy-e). Remembered per sender while the selection
        version stays (fast path only): a fleet names the same devices every tick, and comparing
        two lists of uuids costs a tenth of looking them up again. They are kept once a sender
        named the same uuids twice in a row: one whose devices change every tick leaves no
        long-lived containers behind (each would count towards the collector's next passes)."""
        remember = self._known_version is not None and self.fast and isinstance(sender, str)
        if remember:
            names = list(commands)
            known = self._known.get(sender)
            if known is not None and known[0] is selected and known[1] == names:
                return known[2:]
        own = self._own_devices(sender, selected)
        if own is not None:  # one lookup in a small map of the sender's devices
            keys = names if remember else list(commands)
            found = list(map(own.get, keys))
        else:
            keys = list(filter(selected.__contains__, commands))
            found = list(map(self.devices.get, keys))
        if None in found:  # unknown devices, or (own map) others'
            keys = [u for u, d in zip(keys, found, strict=True) if d is not None]
            found = [d for d in found if d is not None]
        devs = cast(list[tuple[int, int]], found)
        kinds = list(map(itemgetter(0), devs))
        idxs = list(map(itemgetter(1), devs))
        assets = {i for kd, i in devs if kd == ASSET} if MARKET in kinds else set(idxs)
        if remember:
            self._known.pop(sender, None)
            named = hash(tuple(names))
            if self._named.get(sender) == named:
                names = keys if len(keys) == len(names) else names  # one list, not two
                self._known[sender] = (selected, names, keys, kinds, idxs, assets)
            self._named[sender] = named
        return keys, kinds, idxs, assets

    def _own_devices(
        self, sender: Any, selected: Collection[str]
    ) -> dict[str, tuple[int, int]] | None:
        """The sender's devices as last synced, if that is still its selection."""
        reg = self.selections
        if reg is None or not isinstance(sender, str) or sender in reg.changed:
            return None
        own = self.own_devices.get(sender)
        if own is None or reg.selected.get(sender) is not selected or len(own) != len(selected):
            return None
        return own

    def _check(self, cands: _Cands) -> _Checked:
        """The checks of :meth:`order` after the shape ones, for all candidates at once."""
        st = self.state
        if not cands.m:
            return _Checked(cands, np.zeros(0, dtype=bool))
        idx, is_b, en, pr, rep = cands.idx, cands.is_b, cands.en, cands.pr, cands.rep
        kind_arr = st.grid.kind[idx]
        bought, sold, demand = st.bought[idx], st.sold[idx], st.demand[idx]
        room_b = np.where(kind_arr == LOAD, demand - bought, st.buy_limit[idx] - bought)
        room_b = np.where(rep, room_b, room_b - st.active_bid[idx])
        room_o = np.where(kind_arr == PV, demand - sold, st.sell_limit[idx] - sold)
        room_o = np.where(rep, room_o, room_o - st.active_offer[idx])
        fits = np.where(
            is_b, ~(en > room_b + REPORT_ROUNDING_KWH), ~(en > room_o + OFFER_TOLERANCE_KWH)
        )
        good = fits & ~((en <= MIN_ENERGY_KWH) | (pr < 0)) & ~cands.late
        return _Checked(cands, good)

    def _run_general(
        self,
        items: Sequence[BatchItem],
        heads: list[_Head],
        spans: list[_Span],
        checked: _Checked,
        row0: int,
    ) -> _General:
        """Answer every general-path batch and device, in order, each at the row its commands
        would have started at; remember where its rows shift the fast path's."""
        st = self.state
        acc_before = checked.acc_before
        gen = _General()
        extra = 0  # rows the general path added so far
        fast_before = 0
        for bi, (head, _, batch, plan) in enumerate(heads):
            if not head:
                if batch is None:
                    gen.results.append((None, 0))
                    continue
                st.reserve(row0 + acc_before[fast_before] + extra)
                n0 = st.n_rows
                gen.results.append(self._respond_general(batch, items[bi][1], items[bi][2]))
                if st.n_rows != n0:
                    extra += st.n_rows - n0
                    gen.shift.append((acc_before[fast_before], extra))
                continue
            gen.results.append(None)
            lo, hi, all_fast, _ = spans[bi]
            if all_fast:
                if hi > lo:
                    fast_before = hi
                continue
            tid = batch.get("transaction_id")
            for pi, (uuid, kind, a, cmds, start) in enumerate(plan):
                if start >= 0:
                    fast_before = start + len(cmds)
                    continue
                st.reserve(row0 + acc_before[fast_before] + extra)
                n0 = st.n_rows
                gen.answers[bi, pi] = b",".join(
                    orjson.dumps(self.command(kind, a, uuid, c, tid))
                    for c in _as_sent(batch, uuid, cmds)
                )
                if st.n_rows != n0:
                    extra += st.n_rows - n0
                    gen.shift.append((acc_before[fast_before], extra))
        gen.extra = extra
        return gen

    def _uuid_js(self, uuid: str) -> bytes:
        """The device uuid as JSON (cached)."""
        ujs = self._ujs.get(uuid)
        if ujs is None:
            ujs = self._ujs[uuid] = orjson.dumps(uuid)
        return ujs

    def _place(self, heads: list[_Head], checked: _Checked, gen: _General, row0: int) -> _Answers:
        """Write the accepted orders (rows, columns, chains, sums) in bulk and render every
        candidate's answer, one Arrow row each, from per-asset templates and numbers rendered
        in bulk, column by column in C (no Python object per answer). A candidate's row opens
        with the comma before it (none for the first answer of a batch) and its device's
        ``"<uuid>":[``, and closes its device's list after its last command; a rejected
        candidate's middle is its error answer."""
        st = self.state
        c = checked.cands
        m, n_acc, acc = checked.m, checked.n_acc, checked.acc
        if not m:
            st.reserve(row0 + gen.extra)
            return _Answers(None)
        seq = np.zeros(m, dtype=np.int64)
        rate = np.zeros(m)
        if n_acc:
            rows = row0 + np.arange(n_acc, dtype=np.int64)
            for k0, ex in gen.shift:
                rows[k0:] = row0 + np.arange(k0, n_acc, dtype=np.int64) + ex
            st.reserve(int(rows[-1]) + 1)
            e_acc = c.en[acc]
            with np.errstate(all="ignore"):
                rate[acc] = c.pr[acc] / e_acc
            st.write_orders(rows, c.idx[acc], c.is_b[acc], e_acc, rate[acc], c.rep[acc])
            seq[acc] = rows + st.seq_base + 1
        st.reserve(row0 + n_acc + gen.extra)
        # the first answer of a batch: its first device is fast (no comma before it)
        first_item = np.zeros(m, dtype=bool)
        for _, _, _, plan in heads:
            if plan and plan[0][4] >= 0:
                first_item[plan[0][4]] = True
        pieces = self._pieces
        n = pieces.n
        idx, is_b = c.idx, c.is_b
        # each column is one take from a table of pieces (Arrow's if_else on binary is slow)
        sep = pieces.sep.take(np.where(c.first, np.where(first_item, n + idx, idx), 2 * n))
        p8 = round8(c.pr)
        if c.int_price:  # an int price is written as sent (rounding it keeps it an int)
            p8_obj = [
                x if type(x) is int else r for x, r in zip(c.prices, p8.tolist(), strict=True)
            ]
            price8, price = texts(reprs_b(p8_obj)), texts(reprs_b(c.prices))
        else:
            price8, price = floats(p8), floats(c.pr)
        tids = texts([h[1].encode() for h in heads]).take(c.batch)
        mid = (
            f", {_Q}creation_time{_Q}: {_Q}{self.sim_time}{_Q}, "
            f"{_Q}time_slot{_Q}: {_Q}{st.time_slot}{_Q}, "
        ).encode()
        middle = [
            _OPENING.take(is_b.astype(np.int64)),
            fixed(hex12s(seq)),
            _E_K,
            floats(c.en),
            _R_K,
            floats(round8(rate)),
            _P_K,
            price8,
            _O_K,
            price,
            mid,
            pieces.tail.take(np.where(is_b, n + idx, idx)),
            tids,
            pieces.end.take(np.where(is_b, n, idx)),
        ]
        trail = _TRAIL.take(c.last.astype(np.int64))
        if n_acc < m:
            rendered = join(*middle)
            errors = self._rejections(heads, checked)
            rendered = pc.replace_with_mask(rendered, ~checked.good, texts(errors))
            return _Answers(join(sep, rendered, trail))
        return _Answers(join(sep, *middle, trail))

    def _rejections(self, heads: list[_Head], checked: _Checked) -> list[bytes]:
        """The rejected candidates' errors (naming the command's arguments), in order."""
        c = checked.cands
        errors: list[bytes] = []
        for j in np.flatnonzero(~checked.good).tolist():
            _, _, batch, plan = heads[int(c.batch[j])]
            q = int(c.q[j])
            uuid, _, a, cmds, _ = plan[int(c.pos[j])]
            verb = "bid" if c.is_b[j] else "offer"
            cmd = _as_sent(batch, uuid, cmds)[q]
            errors.append(
                orjson.dumps(self._order_error(a, uuid, cmd, batch.get("transaction_id"), verb))
            )
        return errors

    def _assemble(
        self,
        heads: list[_Head],
        spans: list[_Span],
        gen: _General,
        answers: _Answers,
        pieces: bool,
    ) -> list[tuple[Payload | None, int] | Exception]:
        """The answers, in the batches' order: a fast batch is its envelope around one range
        of the rendered answers; general devices' answers go between fast devices' ranges."""
        out: list[tuple[Payload | None, int] | Exception] = []
        for bi, (head, _, _, plan) in enumerate(heads):
            done = gen.results[bi]
            if done is not None:
                out.append(done)
                continue
            if not plan:
                out.append((None, 0))
                continue
            lo, hi, all_fast, n_cmds = spans[bi]
            if all_fast:
                whole = Pieces((head, answers.range(lo, hi), b"}}"))
                out.append((whole if pieces else whole.join(), n_cmds))
                continue
            parts: list[bytes | memoryview] = [head]
            for pi, (uuid, _, _, cmds, start) in enumerate(plan):
                if start >= 0:
                    parts.append(answers.range(start, start + len(cmds)))
                else:
                    parts += (
                        b"," if pi else b"",
                        self._uuid_js(uuid),
                        b":[",
                        gen.answers[bi, pi],
                        b"]",
                    )
            parts.append(b"}}")
            out.append((Pieces(parts) if pieces else b"".join(parts), n_cmds))
        return out

    def _respond_general(
        self, batch: dict[str, Any] | Typed, selected: Collection[str], aggregator: Any
    ) -> tuple[bytes | None, int] | Exception:
        if isinstance(batch, Typed):
            batch = batch.as_dict()
        out = self.handle(batch, selected if isinstance(selected, set) else set(selected))
        if out is None:
            return None, 0
        envelope = {
            "command": "batch_commands",
            "transaction_id": batch.get("transaction_id"),
            "aggregator_uuid": aggregator,
            "responses": out,
        }
        try:
            return orjson.dumps(envelope), sum(len(v) for v in out.values())
        except TypeError as exc:
            return exc

    def handle(self, batch: dict[str, Any], selected: set[str]) -> dict[str, list[Response]] | None:
        """Responses per device uuid; None when no device of the batch is the sender's (no answer).
        The general path only (the reference for :meth:`respond_many`)."""
        commands = batch.get("batch_commands")
        tid = batch.get("transaction_id")
        if not isinstance(commands, dict):
            return None
        out: dict[str, list[Response]] = {}
        for device_uuid, cmds in commands.items():
            if device_uuid not in selected or device_uuid not in self.devices:
                continue  # unknown or not this aggregator's: silently dropped, like gsy-e
            kind, index = self.devices[device_uuid]
            if not isinstance(cmds, list):
                cmds = [cmds]
            out[device_uuid] = [self.command(kind, index, device_uuid, c, tid) for c in cmds]
        return out or None

    def command(self, kind: int, index: int, uuid: str, cmd: Any, tid: Any) -> Response:
        if not isinstance(cmd, dict) or "type" not in cmd:
            return {"status": "error", "area_uuid": uuid, "message": "Invalid command type"}
        ctype = cmd["type"]
        try:
            if kind == MARKET:
                if ctype == "dso_market_stats":
                    return self.dso_market_stats(index, uuid)
                if ctype == "grid_fees":
                    return self.grid_fees(index, uuid, cmd, tid)
            else:
                if ctype in ("bid", "offer"):
                    return self.order(index, uuid, cmd, tid, ctype == "bid")
                if ctype in ("delete_bid", "delete_offer"):
                    return self.delete(index, uuid, cmd, tid, ctype == "delete_bid")
                if ctype in ("list_bids", "list_offers"):
                    return self.list(index, uuid, cmd, tid, ctype == "list_bids")
                if ctype == "device_info":
                    return {
                        "command": "device_info",
                        "status": "ready",
                        "device_info": self.state.asset_info(index),
                        "transaction_id": tid,
                        "area_uuid": uuid,
                    }
                if (
                    ctype in ("set_energy_forecast", "set_energy_measurement")
                    and self.state.grid.kind_list[index] != STORAGE
                ):
                    return self.set_energy(index, uuid, cmd, tid, ctype)
        except Exception as exc:  # never let one command take the exchange down
            return {
                "command": ctype,
                "status": "error",
                "area_uuid": uuid,
                "error_message": f"Error when handling {ctype}: {exc!r}",
                "transaction_id": tid,
            }
        return {
            "command": ctype,
            "status": "error",
            "area_uuid": uuid,
            "message": f"Command type not supported for device {uuid}",
        }

    # ------------------------------------------------------------------ orders

    def _order_error(
        self,
        a: int,
        uuid: str,
        cmd: dict[str, Any],
        tid: Any,
        verb: str,
        reason: str = "",
        market_type: str = SPOT,
    ) -> Response:
        args = {**cmd, "transaction_id": tid}
        name = self.state.grid.asset_name[a]
        msg = f"Error when handling {verb} create on area {name} with arguments {args!r}"
        msg += f":{reason}" if reason else "."
        if cmd.get("type") == "bid" and (verb == "bid" or market_type != SPOT):
            return {
                "command": verb,
                "status": "error",
                "area_uuid": uuid,
                "market_type": market_type,
                "error_message": msg,
                "transaction_id": tid,
            }
        return {
            "command": "offer",
            "status": "error",
            "market_type": market_type,
            "error_message": msg,
            "area_uuid": uuid,
            "transaction_id": tid,
        }

    def order(self, a: int, uuid: str, cmd: dict[str, Any], tid: Any, is_bid: bool) -> Response:
        # Hot path: up to 100 000 orders per tick. Checks are ordered cheapest first and the
        # error message (a Python repr of the arguments, as gsy-e writes it) is built only on error.
        st = self.state
        slot = cmd.get("time_slot")
        if (
            slot is not None
            and st.settlement is not None
            and not (isinstance(slot, str) and slot[:16] == st.market_slot)
        ):
            label = parse_time_slot(slot)
            if label is not None and label in st.settlement.slots:
                return self.settlement_order(a, uuid, cmd, tid, is_bid, label)
        kind = st.grid.kind_list[a]
        verb = "bid" if is_bid else "offer"
        if is_bid and kind == PV:
            return self._order_error(
                a, uuid, cmd, tid, "offer", "Bid not supported for PV on spot markets."
            )
        if not is_bid and kind == LOAD:
            return self._order_error(
                a, uuid, cmd, tid, "offer", "Offer not supported for Loads on spot markets."
            )
        # The five 11_CRASH_* cases: the real exchange dies here; we answer an error instead.
        if not ORDER_KEYS.issuperset(cmd):
            extra = sorted(set(cmd) - ORDER_KEYS)
            return self._order_error(
                a, uuid, cmd, tid, verb, f"Invalid arguments: unexpected key(s) {extra}."
            )
        energy = cmd.get("energy")
        price = cmd.get("price")
        for key, value in (("energy", energy), ("price", price)):
            if value is None:
                return self._order_error(
                    a, uuid, cmd, tid, verb, f"Invalid arguments: '{key}' is required."
                )
            if not _is_number(value):
                return self._order_error(
                    a, uuid, cmd, tid, verb, f"Invalid arguments: '{key}' must be a number."
                )
        if slot is not None and (
            not isinstance(slot, str) or slot[:16] != st.market_slot or self.closing
        ):
            return self._order_error(a, uuid, cmd, tid, verb)
        assert energy is not None and price is not None
        if energy <= MIN_ENERGY_KWH or price < 0:
            return self._order_error(a, uuid, cmd, tid, verb)
        replace = cmd.get("replace_existing", True) is not False
        if is_bid:
            if kind == LOAD:
                room = float(st.demand[a] - st.bought[a])
            else:
                room = float(st.buy_limit[a] - st.bought[a])
            if not replace:
                room -= float(st.active_bid[a])
            if energy > room + REPORT_ROUNDING_KWH:
                return self._order_error(a, uuid, cmd, tid, verb)
        else:
            if kind == PV:
                room = float(st.demand[a] - st.sold[a])
            else:
                room = float(st.sell_limit[a] - st.sold[a])
            if not replace:
                room -= float(st.active_offer[a])
            if energy > room + OFFER_TOLERANCE_KWH:
                return self._order_error(a, uuid, cmd, tid, verb)
        if replace:
            st.delete_orders(a, is_bid)
        rendered = st.add_order(a, is_bid, float(energy), price, self.sim_time)
        return _placed(is_bid, rendered, uuid, tid, SPOT)

    def settlement_order(
        self, a: int, uuid: str, cmd: dict[str, Any], tid: Any, is_bid: bool, label: str
    ) -> Response:
        """A bid or offer whose ``time_slot`` names an open settlement market."""
        st = self.state
        assert st.settlement is not None
        verb = "bid" if is_bid else "offer"

        def refuse(reason: str = "", as_verb: str = verb) -> Response:
            return self._order_error(a, uuid, cmd, tid, as_verb, reason, SETTLEMENT_MARKET)

        if not ORDER_KEYS.issuperset(cmd):
            return refuse(f"Invalid arguments: unexpected key(s) {sorted(set(cmd) - ORDER_KEYS)}.")
        energy_in, price = cmd.get("energy"), cmd.get("price")
        if not (_is_number(energy_in) and _is_number(price)):
            return refuse()
        assert isinstance(energy_in, int | float) and isinstance(price, int | float)
        energy = float(energy_in)
        if energy <= MIN_ENERGY_KWH or price < 0:
            return refuse()
        replace = cmd.get("replace_existing", True) is not False
        try:
            oid, rate, shown = st.settlement.order(
                a, label, is_bid, energy, float(price), replace, REPORT_ROUNDING_KWH
            )
        except OrderRefused as exc:
            return refuse(exc.reason, "offer" if exc.label_as_offer else verb)
        rendered = st.order_json(
            a, is_bid, oid, energy, rate, price, self.sim_time, time_slot=shown
        )
        return _placed(is_bid, rendered, uuid, tid, SETTLEMENT_MARKET)

    def _settlement_label(self, cmd: dict[str, Any]) -> str | None:
        """The open settlement market a list/delete command names in ``time_slot``, if any."""
        st = self.state
        slot = cmd.get("time_slot")
        if slot is None or st.settlement is None:
            return None
        label = parse_time_slot(slot)
        return label if label in st.settlement.slots else None

    def delete(self, a: int, uuid: str, cmd: dict[str, Any], tid: Any, is_bid: bool) -> Response:
        key = "bid_id" if is_bid else "offer_id"
        oid = cmd.get(key)
        label = self._settlement_label(cmd)
        if label is not None and (oid is None or isinstance(oid, str)):
            assert self.state.settlement is not None
            gone = self.state.settlement.delete(a, label, is_bid, oid)
        else:
            gone = (
                self.state.delete_orders(a, is_bid, oid if isinstance(oid, str) else None)
                if oid is None or isinstance(oid, str)
                else []
            )
        if is_bid:
            return {
                "command": "bid_delete",
                "status": "ready",
                "deleted_bids": gone,
                "area_uuid": uuid,
                "transaction_id": tid,
            }
        return {
            "command": "offer_delete",
            "status": "ready",
            "deleted_offers": gone,
            "area_uuid": uuid,
            "transaction_id": tid,
        }

    def list(self, a: int, uuid: str, cmd: dict[str, Any], tid: Any, is_bid: bool) -> Response:
        label = self._settlement_label(cmd)
        if label is not None:
            assert self.state.settlement is not None
            orders = self.state.settlement.list(a, label, is_bid)
        else:
            orders = self.state.list_orders(a, is_bid)
        rows = [
            {"id": oid, "price": round(rate * energy, 8), "energy": energy}
            for oid, rate, energy in orders
        ]
        if is_bid:
            return {
                "command": "list_bids",
                "status": "ready",
                "bid_list": rows,
                "area_uuid": uuid,
                "transaction_id": tid,
            }
        return {
            "command": "list_offers",
            "status": "ready",
            "offer_list": rows,
            "area_uuid": uuid,
            "transaction_id": tid,
        }

    def set_energy(self, a: int, uuid: str, cmd: dict[str, Any], tid: Any, ctype: str) -> Response:
        key = "energy_forecast" if ctype == "set_energy_forecast" else "energy_measurement"
        profile = cmd.get(key, cmd.get(f"{key}_kWh"))
        labels = (
            {k: parse_time_slot(k) for k in profile} if isinstance(profile, dict) else {"": None}
        )
        bad = (
            not isinstance(profile, dict)
            or None in labels.values()
            or not all(_is_number(v) and v >= 0 for v in profile.values())
        )
        args = {**cmd, "transaction_id": tid}
        if bad:
            # gsy-e's answer to a key it cannot parse, an offset, a negative value (probes 15-17)
            return {
                "command": ctype,
                "status": "error",
                "area_uuid": uuid,
                "error_message": f"Error when handling {ctype} on area {self.state.grid.asset_name[a]} with arguments {args}.",
                "transaction_id": tid,
            }
        assert isinstance(profile, dict)
        for slot, kwh in profile.items():
            label = labels[slot]
            assert label is not None
            self.state.set_energy(a, label, float(kwh), measurement=key == "energy_measurement")
        return {
            "command": ctype,
            "status": "ready",
            ctype: args,
            "area_uuid": uuid,
            "transaction_id": tid,
        }

    # ------------------------------------------------------------------ markets

    def dso_market_stats(self, m: int, uuid: str) -> Response:
        return {
            "status": "ready",
            "name": self.state.grid.markets[m].name,
            "area_uuid": uuid,
            "command": "dso_market_stats",
            "market_stats": self.state.stats.dso_market_stats(m),
        }

    def grid_fees(self, m: int, uuid: str, cmd: dict[str, Any], tid: Any) -> Response:
        data = cmd.get("data")
        const = data.get("fee_const") if isinstance(data, dict) else None
        pct = data.get("fee_percent") if isinstance(data, dict) else None
        value: Any = const if const is not None else pct
        if (const is None) == (pct is None) or not _is_number(value) or value < 0:
            return {
                "area_uuid": uuid,
                "command": "grid_fees",
                "status": "error",
                "error_message": "grid_fees needs data {'fee_const': ct/kWh} or {'fee_percent': %}, non-negative",
                "transaction_id": tid,
            }
        st = self.state
        if const is not None:
            st.fee_const[m], st.fee_percent[m] = float(const), math.nan
        else:
            st.fee_const[m], st.fee_percent[m] = 0.0, float(value)
        st.fee_changed = True
        return {
            "area_uuid": uuid,
            "command": "grid_fees",
            "status": "ready",
            "market_fee_const": str(const),
            "market_fee_percent": str(pct),
        }
