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
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import orjson

from gridfleet.simulator.grid import LOAD, PV, STORAGE
from gridfleet.simulator.numfmt import hex12, reprs, round8
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
BatchItem = tuple[dict[str, Any], Collection[str], Any]  # (batch, sender's devices, sender)
# a device of a batch: (uuid, ASSET|MARKET, index, commands, first candidate or -1: general path)
_Device = tuple[str, int, int, list[Any], int]
# a batch: (envelope head or b"": general path, transaction id as JSON, batch, its devices)
_Head = tuple[bytes, str, Any, list[_Device]]
# a fast-path order: (asset, is bid, energy, price, replace_existing, bad time_slot)
_Candidate = tuple[int, bool, Any, Any, bool, bool]


class _Checked:
    """The candidates as columns and which of them passed the checks."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.good = np.zeros(m, dtype=bool)
        self.idx = self.is_b = self.en = self.pr = self.rep = self.good
        self.sides: tuple[bool, ...] = ()  # is bid, per candidate
        self.prices: tuple[Any, ...] = ()  # the price objects as sent (int or float)
        self._set_acc()

    def set_columns(
        self,
        good: np.ndarray,
        idx: np.ndarray,
        is_b: np.ndarray,
        en: np.ndarray,
        pr: np.ndarray,
        rep: np.ndarray,
        sides: tuple[bool, ...],
        prices: tuple[Any, ...],
    ) -> None:
        self.good, self.idx, self.is_b, self.en, self.pr, self.rep = good, idx, is_b, en, pr, rep
        self.sides, self.prices = sides, prices
        self._set_acc()

    def _set_acc(self) -> None:
        self.acc = np.flatnonzero(self.good)
        self.n_acc = len(self.acc)
        # accepted orders before candidate j: rows are numbered in command order
        self.acc_before: list[int] = np.concatenate(([0], np.cumsum(self.good))).tolist()


class _General:
    """What the general path answered and how many rows it added where."""

    def __init__(self) -> None:
        # per batch: its whole answer (general-path batch, or no answer), None: assembled later
        self.results: list[tuple[bytes | None, int] | Exception | None] = []
        self.answers: dict[tuple[int, int], str] = {}  # (batch, device) -> its responses' JSON
        self.shift: list[tuple[int, int]] = []  # (accepted orders before, extra rows from there)
        self.extra = 0  # rows the general path added in all


def _tid_per_candidate(heads: list[_Head], m: int, acc: np.ndarray) -> list[str]:
    """The JSON transaction id of the batch each accepted candidate came from."""
    per = [""] * m
    for _, tid_js, _, plan in heads:
        for _, _, _, cmds, start in plan:
            if start >= 0:
                per[start : start + len(cmds)] = [tid_js] * len(cmds)
    return [per[j] for j in acc.tolist()]


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
    :meth:`BatchHandler.order` per command (the hot loop), each fast device's orders appended
    to ``cand``; a device whose commands do not all fit takes the general path (start -1)."""
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
        # per asset, the constant ends of its ready answers (see :meth:`_ready`)
        self._bid_tail: dict[int, str] = {}
        self._off_tail: dict[int, str] = {}
        self._off_end: dict[int, str] = {}
        self._ujs: dict[str, str] = {}  # device uuid -> as JSON

    # ------------------------------------------------------------------ whole batches

    def respond(
        self, batch: dict[str, Any], selected: Collection[str], aggregator: Any
    ) -> tuple[bytes | None, int]:
        """Apply one BATCHED message: see :meth:`respond_many`."""
        result = self.respond_many([(batch, selected, aggregator)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def respond_many(
        self, items: Sequence[BatchItem]
    ) -> list[tuple[bytes | None, int] | Exception]:
        """Apply BATCHED messages ``(batch, sender's selected devices, sender uuid)`` in order.

        For each: its serialised ``batch_commands`` answer (None: no answer) and the number of
        commands answered, or the exception the original code raised while answering it (a
        transaction id orjson cannot serialise). The bytes are exactly ``orjson.dumps`` of the
        envelope around :meth:`handle`'s responses, and the state ends up exactly as if
        :meth:`handle` had run on each batch in turn (tests/simulator/test_batch_fast.py checks
        both against the original code).

        Fast path: a device whose commands have the common shape (a bid and/or an offer with
        energy, price and optionally ``replace_existing`` / ``time_slot``) has its orders
        checked with numpy together with every other such device of ``items``; the accepted
        orders are written to the order columns in bulk and answered from a template with
        their numbers rendered in bulk. Every other device takes the general path
        (:meth:`command`), devices in order. Devices of different assets share no state, so
        only the order ids (rows, in command order) tie them; a batch naming an asset that an
        earlier batch of ``items`` named starts a new round of this, so it sees that batch's
        effect.
        """
        heads, cand, cut = self._plan(items)
        checked = self._check(cand)
        row0 = self.state.n_rows
        general = self._run_general(items, heads, checked, row0)
        lead, trail = self._brackets(heads, len(cand))
        texts = self._place(heads, checked, general, row0, lead, trail)
        if checked.n_acc < checked.m:
            texts = self._rejections(heads, checked, texts, lead, trail)
        out = self._assemble(heads, general, texts)
        if cut < len(items):
            out.extend(self.respond_many(items[cut:]))
        return out

    def _plan(self, items: Sequence[BatchItem]) -> tuple[list[_Head], list[_Candidate], int]:
        """Decode the batches: per batch its head and device plan, the fast-path candidates,
        and where to cut ``items`` (the first batch naming an asset an earlier one named)."""
        st = self.state
        devices = self.devices
        kinds = st.grid.kind_list
        slot_now, closing = st.market_slot, self.closing
        heads: list[_Head] = []
        cand: list[_Candidate] = []
        seen: set[int] = set()
        cut = len(items)
        for bi, (batch, selected, aggregator) in enumerate(items):
            commands = batch.get("batch_commands")
            if not isinstance(commands, dict):
                heads.append((b"", "", None, []))
                continue
            mine = [
                (uuid, devices[uuid]) for uuid in commands if uuid in selected and uuid in devices
            ]
            assets = {d[1] for _, d in mine if d[0] == ASSET}
            if not seen.isdisjoint(assets):
                cut = bi
                break
            seen |= assets
            head, tid_js = _envelope_head(batch.get("transaction_id"), aggregator)
            if not self.fast or not head:
                heads.append((b"", "", batch, []))
                continue
            plan = _device_plan(mine, commands, kinds, cand, slot_now, closing)
            heads.append((head, tid_js, batch, plan))
        return heads, cand, cut

    def _check(self, cand: list[_Candidate]) -> _Checked:
        """The checks of :meth:`order` after the shape ones, for all candidates at once."""
        st = self.state
        m = len(cand)
        checked = _Checked(m)
        if m:
            fa, fbid, fe, fp, frep, fbad = zip(*cand, strict=True)
            idx = np.array(fa, dtype=np.intp)
            is_b = np.array(fbid, dtype=bool)
            en = np.array(fe, dtype=np.float64)
            pr = np.array(fp, dtype=np.float64)
            rep = np.array(frep, dtype=bool)
            kind_arr = st.grid.kind[idx]
            bought, sold, demand = st.bought[idx], st.sold[idx], st.demand[idx]
            room_b = np.where(kind_arr == LOAD, demand - bought, st.buy_limit[idx] - bought)
            room_b = np.where(rep, room_b, room_b - st.active_bid[idx])
            room_o = np.where(kind_arr == PV, demand - sold, st.sell_limit[idx] - sold)
            room_o = np.where(rep, room_o, room_o - st.active_offer[idx])
            fits = np.where(
                is_b, ~(en > room_b + REPORT_ROUNDING_KWH), ~(en > room_o + OFFER_TOLERANCE_KWH)
            )
            good = fits & ~((en <= MIN_ENERGY_KWH) | (pr < 0)) & ~np.array(fbad, dtype=bool)
            checked.set_columns(good, idx, is_b, en, pr, rep, fbid, fp)
        return checked

    def _run_general(
        self, items: Sequence[BatchItem], heads: list[_Head], checked: _Checked, row0: int
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
            tid = batch.get("transaction_id")
            for pi, (uuid, kind, a, cmds, start) in enumerate(plan):
                if start >= 0:
                    fast_before = start + len(cmds)
                    continue
                st.reserve(row0 + acc_before[fast_before] + extra)
                n0 = st.n_rows
                gen.answers[bi, pi] = ",".join(
                    orjson.dumps(self.command(kind, a, uuid, c, tid)).decode() for c in cmds
                )
                if st.n_rows != n0:
                    extra += st.n_rows - n0
                    gen.shift.append((acc_before[fast_before], extra))
        gen.extra = extra
        return gen

    def _uuid_js(self, uuid: str) -> str:
        """The device uuid as JSON (cached)."""
        ujs = self._ujs.get(uuid)
        if ujs is None:
            ujs = self._ujs[uuid] = orjson.dumps(uuid).decode()
        return ujs

    def _brackets(self, heads: list[_Head], m: int) -> tuple[list[str], list[str]]:
        """Per candidate: what opens its device's list (``"<uuid>":[``) and what closes it."""
        lead = [""] * m
        trail = [""] * m
        for _, _, _, plan in heads:
            for uuid, _, _, cmds, start in plan:
                if start >= 0:
                    lead[start] = f"{self._uuid_js(uuid)}:["
                    trail[start + len(cmds) - 1] = "]"
        return lead, trail

    def _place(
        self,
        heads: list[_Head],
        checked: _Checked,
        gen: _General,
        row0: int,
        lead: list[str],
        trail: list[str],
    ) -> list[str]:
        """Write the accepted orders (rows, columns, chains, sums) in bulk; their ``ready``
        answers from templates, by candidate ("" where rejected)."""
        st = self.state
        m, n_acc, acc = checked.m, checked.n_acc, checked.acc
        texts: list[str] = []
        if n_acc:
            rows = row0 + np.arange(n_acc, dtype=np.int64)
            for k0, ex in gen.shift:
                rows[k0:] = row0 + np.arange(k0, n_acc, dtype=np.int64) + ex
            st.reserve(int(rows[-1]) + 1)
            pr, en, idx, is_b = checked.pr, checked.en, checked.idx, checked.is_b
            p_acc, e_acc = pr[acc], en[acc]
            with np.errstate(all="ignore"):
                rate = p_acc / e_acc
            st.write_orders(rows, idx[acc], is_b[acc], e_acc, rate, checked.rep[acc])
            acc_l = acc.tolist()
            p_obj = [checked.prices[j] for j in acc_l]
            p8: list[Any] = round8(p_acc).tolist()
            if any(type(x) is int for x in p_obj):
                p8 = [x if type(x) is int else r for x, r in zip(p_obj, p8, strict=True)]
            texts = self._ready(
                hex12(rows + st.seq_base + 1),
                idx[acc].tolist(),
                is_b[acc].tolist(),
                reprs(e_acc.tolist()),
                reprs(round8(rate).tolist()),
                reprs(p8),
                reprs(p_obj),
                _tid_per_candidate(heads, m, acc),
                lead if n_acc == m else [lead[j] for j in acc_l],
                trail if n_acc == m else [trail[j] for j in acc_l],
            )
            if n_acc < m:
                full: list[str] = [""] * m
                for j, text in zip(acc_l, texts, strict=True):
                    full[j] = text
                texts = full
        st.reserve(row0 + n_acc + gen.extra)
        return texts

    def _rejections(
        self,
        heads: list[_Head],
        checked: _Checked,
        texts: list[str],
        lead: list[str],
        trail: list[str],
    ) -> list[str]:
        """Fill in the rejected candidates' errors (naming the command's arguments)."""
        if not texts:
            texts = [""] * checked.m
        sides = checked.sides
        for _, _, batch, plan in heads:
            for uuid, _, a, cmds, start in plan:
                for q in range(len(cmds) if start >= 0 else 0):
                    j = start + q
                    if not texts[j]:
                        verb = "bid" if sides[j] else "offer"
                        tid = batch.get("transaction_id")
                        err = orjson.dumps(self._order_error(a, uuid, cmds[q], tid, verb))
                        texts[j] = f"{lead[j]}{err.decode()}{trail[j]}"
        return texts

    def _assemble(
        self, heads: list[_Head], gen: _General, texts: list[str]
    ) -> list[tuple[bytes | None, int] | Exception]:
        """The answers, in the batches' order: fast runs by slice, general devices between."""
        out: list[tuple[bytes | None, int] | Exception] = []
        for bi, (head, _, _, plan) in enumerate(heads):
            done = gen.results[bi]
            if done is not None:
                out.append(done)
                continue
            if not plan:
                out.append((None, 0))
                continue
            n_cmds = 0
            parts: list[str] = []
            lo = hi = -1  # a run of fast devices' candidates, answered by one slice
            for pi, (uuid, _, _, cmds, start) in enumerate(plan):
                n_cmds += len(cmds)
                if start >= 0 and start == hi:
                    hi = start + len(cmds)
                    continue
                if hi > lo:
                    parts.extend(texts[lo:hi])
                lo = hi = -1
                if start >= 0:
                    lo, hi = start, start + len(cmds)
                    continue
                parts.append(f"{self._uuid_js(uuid)}:[{gen.answers[bi, pi]}]")
            if hi > lo:
                parts.extend(texts[lo:hi])
            out.append((head + ",".join(parts).encode() + b"}}", n_cmds))
        return out

    def _ready(
        self,
        ids: list[str],
        assets: list[int],
        is_bid: list[bool],
        e_s: list[str],
        r8_s: list[str],
        p8_s: list[str],
        p_s: list[str],
        tids: list[str],
        lead: list[str],
        trail: list[str],
    ) -> list[str]:
        """``ready`` answers of placed orders, as orjson writes :meth:`order`'s dicts (the
        order's rendering, ``ExchangeState.order_json``, is a JSON string inside them), each
        between its ``lead`` and ``trail``."""
        st = self.state
        bid_tail, off_tail, off_end = self._bid_tail, self._off_tail, self._off_end
        q = '\\"'
        for a in assets:
            if a not in bid_tail:
                esc = orjson.dumps(st.party(a)).decode()[1:-1]
                ujs = orjson.dumps(st.grid.asset_uuid[a]).decode()
                bid_tail[a] = f'{q}buyer{q}: {esc}}}","area_uuid":{ujs},"transaction_id":'
                off_tail[a] = f'{q}seller{q}: {esc}}}","transaction_id":'
                off_end[a] = f',"area_uuid":{ujs},"market_type":"Spot Market","message":""}}'
        mid = (
            f", {q}creation_time{q}: {q}{self.sim_time}{q}, {q}time_slot{q}: {q}{st.time_slot}{q}, "
        )
        oid = f"{q}id{q}: {q}{SPOT_ORDER_ID_PREFIX}"
        bid0 = f'{{"command":"bid","status":"ready","bid":"{{{q}type{q}: {q}Bid{q}, {oid}'
        off0 = f'{{"command":"offer","status":"ready","offer":"{{{q}type{q}: {q}Offer{q}, {oid}'
        bid_end = ',"market_type":"Spot Market","message":""}'
        e_k = f"{q}, {q}energy{q}: "
        r_k = f", {q}energy_rate{q}: "
        p_k = f", {q}price{q}: "
        o_k = f", {q}original_price{q}: "
        return [
            f"{ld}{bid0}{i}{e_k}{e}{r_k}{r}{p_k}{p8}{o_k}{p}{mid}{bid_tail[a]}{t}{bid_end}{tr}"
            if b
            else f"{ld}{off0}{i}{e_k}{e}{r_k}{r}{p_k}{p8}{o_k}{p}{mid}{off_tail[a]}{t}{off_end[a]}{tr}"
            for i, a, b, e, r, p8, p, t, ld, tr in zip(
                ids, assets, is_bid, e_s, r8_s, p8_s, p_s, tids, lead, trail, strict=True
            )
        ]

    def _respond_general(
        self, batch: dict[str, Any], selected: Collection[str], aggregator: Any
    ) -> tuple[bytes | None, int] | Exception:
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
