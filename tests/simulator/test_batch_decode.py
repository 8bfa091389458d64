"""The strict decode of BATCHED messages and the per-sender device cache, against orjson and the
general path, over wide inputs (hypothesis):

- whatever :func:`decode_batch` takes, orjson takes too, with the same values, types and key
  order (the JSON texts are built by hand: number notations, escapes, duplicate keys, odd
  values, whitespace);
- ``_bulk_plan`` over :class:`Order` structs (alone and mixed with dicts) against the same
  commands as orjson dicts;
- ``respond_many`` fed what the engine feeds it (``decode_batch(raw) or orjson.loads(raw)``:
  strictly decoded batches, fallbacks, both in one chunk, settlement slots) against the
  original code and the general path, byte for byte and value for value;
- the cache of which devices a sender names are its own, with selections changing between
  batches, against a handler without it.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gridfleet.simulator.batch import ASSET, MARKET, ORDER_KEYS, BatchHandler, _bulk_plan
from gridfleet.simulator.batch_decode import Typed, decode_batch
from gridfleet.simulator.door import BATCH, Inbound
from gridfleet.simulator.events import EventBuilder
from gridfleet.simulator.grid import LOAD, PV, generate_grid
from gridfleet.simulator.intake import Intake
from gridfleet.simulator.registry import AggregatorRegistry
from gridfleet.simulator.selection import Selection
from gridfleet.simulator.settlement import SettlementMarkets
from gridfleet.simulator.state import ExchangeState
from tests.simulator.test_batch_fast import AGG, SLOT, START, Twin, _batch, _old_bytes

GRID = generate_grid(40, houses_size=10, seed=1)
SLOT_NOW = "2024-06-01T11:30"
FIELDS = (
    ("type", None),
    ("energy", None),
    ("price", None),
    ("replace_existing", True),
    ("time_slot", None),
    ("transaction_id", None),
)

# ------------------------------------------------------------------ JSON texts built by hand

_FLOAT_TEXTS = st.floats(allow_nan=False, allow_infinity=False).map(repr)
_JSON_NUMBERS = st.one_of(
    _FLOAT_TEXTS,
    _FLOAT_TEXTS,
    st.integers(-(2**53), 2**53).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        [
            "1E5",
            "1e-5",
            "-0",
            "-0.0",
            "0.1e1",
            "1e-400",
            "1.7976931348623157e308",
            "123456789012345678901234567890",
            "123456789012345678901234567890.5",
            "9007199254740991",
            "9007199254740992",
            "-9007199254740992",
            "0.30000000000000004",
            "2.5000000000000000001",
        ]
    ),
)
_NUMBERS = _JSON_NUMBERS | st.sampled_from(["1e400", "01", "1.", ".5", "NaN", "Infinity"])
_STRINGS = st.one_of(
    st.text(max_size=8).map(lambda s: orjson.dumps(s).decode()),
    st.sampled_from(
        [
            '"bid"',
            '"offer"',
            '"b\\u0069d"',
            '"\\u006fffer"',
            '"\\ud800"',
            '"\\ud83d\\ude00"',
            '"a\\u0000"',
            f'"{SLOT_NOW}"',
            f'"{SLOT_NOW}:00"',
        ]
    ),
)
_OTHERS = st.sampled_from(["true", "false", "null", "[]", "{}", "[1,{}]", '{"a":1,"a":2}'])
_VALUES = st.one_of(_NUMBERS, _STRINGS, _OTHERS)
_SIDES = st.sampled_from(['"bid"', '"offer"', '"b\\u0069d"', '"\\u006fffer"'])
_TYPES = _SIDES | st.sampled_from(['"delete_bid"', '"Bid"', "null", "1"])


def _object(pairs: list[tuple[str, str]], ws: str) -> str:
    return "{" + ",".join(f"{ws}{orjson.dumps(k).decode()}{ws}:{ws}{v}" for k, v in pairs) + "}"


@st.composite
def _command_text(draw: st.DrawFn, wild: bool) -> str:
    """A command of the common shape (its numbers in any JSON notation), or, ``wild``, with odd
    types, odd values and unknown keys too."""
    pairs = [("type", draw(_TYPES if wild else _SIDES))]
    for key in ("energy", "price"):
        if draw(st.integers(0, 12)) or not wild:
            pairs.append((key, draw(_VALUES if wild and draw(st.booleans()) else _JSON_NUMBERS)))
    if draw(st.booleans()):
        odd = wild and draw(st.booleans())
        pairs.append(
            ("replace_existing", draw(_VALUES if odd else st.sampled_from(["true", "false"])))
        )
    if draw(st.integers(0, 2)) == 0:
        pairs.append(("time_slot", draw(_VALUES if wild else _STRINGS | st.just("null"))))
    if draw(st.integers(0, 8)) == 0:
        pairs.append(("transaction_id", draw(_VALUES if wild else _STRINGS)))
    if wild and draw(st.integers(0, 6)) == 0:
        pairs.append((draw(st.sampled_from(["attributes", "Type", "energy "])), draw(_VALUES)))
    if draw(st.integers(0, 8)) == 0:  # a duplicate key: orjson keeps the last value
        pairs.append(draw(st.sampled_from(pairs)))
    pairs = draw(st.permutations(pairs))
    return _object(pairs, draw(st.sampled_from(["", " ", "\n"])))


@st.composite
def _message_text(draw: st.DrawFn) -> str:
    """A BATCHED message whose commands are all of the common shape half of the time."""
    clean = draw(st.booleans())
    command = st.booleans().flatmap(lambda w: _command_text(w and not clean))
    devices = []
    for _ in range(draw(st.integers(0, 5))):
        uuid = draw(st.sampled_from(["d0", "d1", "d2", "\\u0064\\u0030"]) | st.text(max_size=4))
        if draw(st.integers(0, 10)) == 0:
            value = draw(command | _VALUES)  # a lone command, or no command at all
        else:
            value = "[" + ",".join(draw(st.lists(command, max_size=3))) + "]"
        devices.append((uuid, value))
    ws = draw(st.sampled_from(["", " "]))
    commands = _object(devices, ws) if draw(st.integers(0, 15)) else draw(_VALUES)
    envelope = [("batch_commands", commands)]
    for key in ("type", "transaction_id", "aggregator_uuid"):
        if draw(st.integers(0, 6)):
            envelope.append((key, draw(_STRINGS if draw(st.integers(0, 4)) else _VALUES)))
    if draw(st.integers(0, 15)) == 0:
        envelope.append(("extra", draw(_VALUES)))
    if draw(st.integers(0, 10)) == 0:
        envelope.append(draw(st.sampled_from(envelope)))
    text = _object(draw(st.permutations(envelope)), ws)
    return (
        draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", " "] * 4 + ["x"]))
    )


def _same(a: Any, b: Any) -> bool:
    """Equal, of the same type, and written the same (0.0 and -0.0 differ)."""
    return type(a) is type(b) and repr(a) == repr(b)


@settings(max_examples=600, deadline=None)
@given(_message_text())
def test_what_the_strict_decoder_takes_orjson_reads_the_same(text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    typed = decode_batch(raw)
    if typed is None:
        return  # the fallback: orjson and the general checks, as before
    want = orjson.loads(raw)  # raises if orjson refuses what msgspec took
    assert isinstance(want, dict) and typed.as_dict() == want
    for key in ("transaction_id", "aggregator_uuid", "batch_commands", "type", "nope"):
        assert _same(typed.get(key), want.get(key))
    commands = want["batch_commands"]
    assert list(typed.commands) == list(commands)
    for uuid, cmds in commands.items():
        orders = typed.commands[uuid]
        assert type(cmds) is list and len(cmds) == len(orders)
        for cmd, order in zip(cmds, orders, strict=True):
            assert type(cmd) is dict and ORDER_KEYS.issuperset(cmd)
            for key, default in FIELDS:
                assert _same(getattr(order, key), cmd.get(key, default)), key


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["bid", "offer"]),
                    "energy": st.floats(-1, 5) | st.integers(-(2**53) + 1, 2**53 - 1),
                    "price": st.floats(-1e20, 1e20) | st.integers(-10, 10**6),
                },
                optional={
                    "replace_existing": st.booleans(),
                    "time_slot": st.none() | st.sampled_from([SLOT_NOW, "x"]),
                    "transaction_id": st.none() | st.text(max_size=3),
                },
            ),
            max_size=3,
        ),
        max_size=6,
    )
)
def test_the_common_shape_is_decoded_strictly(devices: list[list[dict[str, Any]]]) -> None:
    message = {"type": "BATCHED", "transaction_id": "t", "aggregator_uuid": AGG}
    message["batch_commands"] = {f"d{i}": cmds for i, cmds in enumerate(devices)}
    typed = decode_batch(orjson.dumps(message))
    assert typed is not None
    assert typed.as_dict() == message


def test_the_intake_reads_a_batch_strictly_or_as_before() -> None:
    def read(data: bytes) -> Any:
        return Intake.parse_batch(Inbound(BATCH, "test", data, 0.0))

    common = b'{"batch_commands":{"d":[{"type":"bid","energy":1,"price":2.5}]}}'
    assert isinstance(read(common), Typed)
    odd = b'{"batch_commands":{"d":[{"type":"list_bids"}]}}'
    assert read(odd) == orjson.loads(odd)
    assert read(b"[1]") is None and read(b"{nope") is None


# ------------------------------------------------------------------ _bulk_plan over structs


def _structs(devices: list[Any]) -> list[Any]:
    """The command lists as the strict decoder gives them (None: it refuses them)."""
    typed = decode_batch(
        orjson.dumps({"batch_commands": {f"d{i}": c for i, c in enumerate(devices)}})
    )
    return list(typed.commands.values()) if typed is not None else []


_ORDERS = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["bid", "offer"]),
        "energy": st.floats(-1, 5) | st.sampled_from([0, 1, 2**53 - 1, 1e300]),
        "price": st.floats(-1, 1e17) | st.sampled_from([0, 3, -1, 2**40, 1e-5]),
    },
    optional={
        "replace_existing": st.booleans(),
        "time_slot": st.none() | st.sampled_from([SLOT_NOW, SLOT_NOW + ":00", "2024-06-01T11:15"]),
    },
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(_ORDERS, max_size=3),
            st.sampled_from([ASSET] * 8 + [MARKET]),
            st.integers(0, GRID.n_assets - 1),
            st.booleans(),  # as a dict (a fallback batch of the same chunk)
        ),
        max_size=25,
    ),
    st.booleans(),
)
def test_bulk_plan_over_structs_equals_over_dicts(
    devices: list[tuple[list[dict[str, Any]], int, int, bool]], closing: bool
) -> None:
    dicts = [orjson.loads(orjson.dumps(d)) for d, _, _, _ in devices]
    kinds = [k for _, k, _, _ in devices]
    idx = [a for _, _, a, _ in devices]
    structs = _structs(dicts)
    assert len(structs) == len(dicts)
    mixed = [
        d if as_dict else s for d, s, (*_, as_dict) in zip(dicts, structs, devices, strict=True)
    ]
    want = _bulk_plan(dicts, kinds, idx, GRID.kind, SLOT_NOW, closing)
    for vals, typed in ((structs, True), (mixed, None)):
        got = _bulk_plan(vals, kinds, idx, GRID.kind, SLOT_NOW, closing, typed)
        assert got[1].tolist() == want[1].tolist()
        assert got[2].tolist() == want[2].tolist()
        g, w = got[3], want[3]
        assert g.m == w.m and g.int_price == w.int_price
        for name in ("idx", "is_b", "en", "pr", "rep", "late", "first", "last", "dev", "q"):
            assert getattr(g, name).tolist() == getattr(w, name).tolist(), name
        assert all(_same(x, y) for x, y in zip(g.prices, w.prices, strict=True))


# ------------------------------------------------------------------ respond_many, as the engine feeds it


def _engine_items(batches: list[dict[str, Any]], selected: Any) -> tuple[list[Any], list[Any]]:
    """The batches as the wire carries them: what the engine applies, and orjson's dicts."""
    raws = [orjson.dumps(b) for b in batches]
    engine = [(decode_batch(r) or orjson.loads(r), selected, AGG) for r in raws]
    return engine, [(orjson.loads(r), selected, AGG) for r in raws]


def _apply_typed(tw: Twin, batches: list[dict[str, Any]]) -> int:
    """Apply through the strict decode (h_new), the general path on dicts (h_gen) and the original
    code (h_old); the same bytes and state. Returns how many batches were decoded strictly."""
    items, dicts = _engine_items(batches, tw.selected)
    want = [_old_bytes(tw.h_old, b, tw.selected) for b, _, _ in dicts]
    got = tw.h_new.respond_many(items)
    gen = tw.h_gen.respond_many(dicts)
    assert [g[0] if isinstance(g, tuple) else g for g in got] == want
    assert [g[0] if isinstance(g, tuple) else g for g in gen] == want
    assert [g[1] for g in got if isinstance(g, tuple)] == [
        g[1] for g in gen if isinstance(g, tuple)
    ]
    tw.same_state()
    return sum(isinstance(b, Typed) for b, _, _ in items)


def _common_batch(rng: random.Random, tw: Twin, tick: int) -> dict[str, Any]:
    """Bids and offers of the common shape (decoded strictly, mostly), every rejection and
    every shape the general path takes among them: three commands, two bids, a bid on a PV,
    an empty list, a market, another slot, int numbers, too much energy, negative prices."""
    g, st_ = tw.grid, tw.new
    slot = st_.market_slot
    cmds: dict[str, Any] = {}
    for a in rng.sample(range(g.n_assets), rng.randint(1, g.n_assets)):
        kind = g.kind_list[a]
        room = max(float(st_.demand[a]), float(st_.buy_limit[a]), float(st_.sell_limit[a]), 0.05)
        lst = []
        sides = ["bid"] if kind == LOAD else ["offer"] if kind == PV else ["bid", "offer"]
        if rng.random() < 0.05:
            sides = rng.choice(
                [["bid", "bid"], ["offer", "bid", "offer"], [], ["bid" if kind == PV else "offer"]]
            )
        for side in sides:
            e = rng.choice(
                [room * rng.uniform(0.05, 1.1)] * 6 + [0, 1, room * 3, -0.5, 1e-9, 2**40]
            )
            p = rng.choice([e * rng.uniform(0, 35)] * 6 + [0, 3, -1, 2.0, 1e-6, 1e17, 0.1 + 0.2])
            cmd: dict[str, Any] = {"type": side, "energy": e, "price": p}
            if rng.random() < 0.3:
                cmd["replace_existing"] = rng.random() < 0.7
            if rng.random() < 0.2:
                cmd["time_slot"] = rng.choice([slot, slot + ":00", "2024-06-01T00:00", None])
            if rng.random() < 0.03:
                cmd["transaction_id"] = "inner"
            if rng.random() < 0.002:  # an int beyond 2**53: the whole message falls back
                cmd["price"] = 10**17
            lst.append(cmd)
        cmds[g.asset_uuid[a]] = lst
    if rng.random() < 0.2:
        cmds[rng.choice(g.markets).uuid] = [{"type": "bid", "energy": 0.1, "price": 1}]
    if rng.random() < 0.1:
        cmds["31b7be79-cd9a-4549-aef8-35b1543e54f4"] = [{"type": "bid", "energy": 1, "price": 1}]
    if rng.random() < 0.05:  # not of the common shape: the whole message falls back
        cmds[g.asset_uuid[0]] = [{"type": "list_bids"}]
    tid = rng.choice([f"{slot}/{tick * 10}%/abc"] * 4 + ["plain", None, 7])
    return {
        "type": "BATCHED",
        "transaction_id": tid,
        "aggregator_uuid": AGG,
        "batch_commands": cmds,
    }


def test_strictly_decoded_batches_answer_as_the_original() -> None:
    rng = random.Random(3)
    typed = 0
    for seed in range(4):
        tw = Twin(seed)
        for slot in (1, 2):
            tw.next_slot(slot)
            for tick in range(10):
                tw.set_time(tick)
                for _ in range(rng.randint(1, 3)):
                    n = rng.randint(1, 4)
                    makers = [_common_batch] * 4 + [lambda r, t, k: _batch(r, t, [], k)]
                    typed += _apply_typed(tw, [rng.choice(makers)(rng, tw, tick) for _ in range(n)])
                tw.match()
    assert typed > 200  # the strict decode was exercised, not only the fallback


def test_a_settlement_slot_in_a_strictly_decoded_batch_takes_the_general_path() -> None:
    grid = generate_grid(60, houses_size=10, seed=2)
    devices = {u: (ASSET, i) for i, u in enumerate(grid.asset_uuid)}
    states = [ExchangeState(grid, SLOT, START, SettlementMarkets(grid)) for _ in range(2)]
    handlers = [BatchHandler(s, devices) for s in states]
    handlers[1].fast = False
    for s, h in zip(states, handlers, strict=True):
        s.open_slot(1)
        s.close_slot()
        s.open_slot(2)
        h.sim_time = s.slot_start.strftime("%Y-%m-%dT%H:%M:%S")
    (label,) = states[0].settlement.slots  # type: ignore[union-attr]
    rng = random.Random(5)
    cmds: dict[str, Any] = {}
    for a in range(grid.n_assets):
        side = "offer" if grid.kind_list[a] == PV else "bid"
        cmd = {"type": side, "energy": rng.uniform(0.01, 0.5), "price": rng.uniform(1, 30)}
        if rng.random() < 0.5:
            cmd["time_slot"] = rng.choice([label, label + ":00", states[0].market_slot])
        cmds[grid.asset_uuid[a]] = [cmd]
    items, dicts = _engine_items([{"transaction_id": "s", "batch_commands": cmds}], set(cmds))
    assert isinstance(items[0][0], Typed)
    got = handlers[0].respond_many(items)
    assert got == handlers[1].respond_many(dicts)
    assert b"Settlement" in got[0][0]  # type: ignore[index]
    for name in ("active_bid", "active_offer", "bought", "sold"):
        assert np.array_equal(getattr(states[0], name), getattr(states[1], name)), name


# ------------------------------------------------------------------ the per-sender device cache


def test_remembered_devices_follow_every_selection_change() -> None:
    """Batches naming the same devices again and again while devices are selected and
    unselected between them (sometimes one just named): the handler that remembers answers
    as one that does not, as one that looks them up in the synced selection maps (synced at
    some rounds only), and as the general path."""
    grid = generate_grid(60, houses_size=10, seed=4)
    devices: dict[str, tuple[int, int]] = {u: (ASSET, i) for i, u in enumerate(grid.asset_uuid)}
    devices.update({m.uuid: (MARKET, m.index) for m in grid.markets})
    registry = AggregatorRegistry({u: u for u in devices})
    aggs = ["agg-a", "agg-b"]
    for agg in aggs:
        registry.command({"type": "CREATE", "name": agg, "transaction_id": agg})
    states = [ExchangeState(grid, SLOT, START) for _ in range(4)]
    handlers = [BatchHandler(s, devices) for s in states]
    handlers[0].selections = registry
    handlers[2].fast = False
    # the fourth looks devices up in the maps the engine's selection syncs, remembering nothing
    selection = Selection(grid, devices, registry, EventBuilder(grid, "pruned"))
    handlers[3].selections = registry
    handlers[3].own_devices = selection.own_devices
    for s, h in zip(states, handlers, strict=True):
        s.open_slot(1)
        h.sim_time = s.slot_start.strftime("%Y-%m-%dT%H:%M:%S")
    rng = random.Random(8)
    uuids = [*grid.asset_uuid, grid.markets[1].uuid, "31b7be79-cd9a-4549-aef8-35b1543e54f4"]
    named = {agg: rng.sample(uuids, 30) for agg in aggs}
    hits = own_hits = 0
    for _ in range(60):
        for _ in range(rng.choice([0, 0, 1, 3])):
            agg, dev = rng.choice(aggs), rng.choice(named[aggs[0]] + named[aggs[1]])
            verb = "UNSELECT" if registry.owner.get(dev) == agg else "SELECT"
            registry.command({"type": verb, "aggregator_uuid": agg, "device_uuid": dev})
        if rng.random() < 0.1:
            agg = rng.choice(aggs)
            named[agg] = rng.sample(uuids, rng.randint(0, 30))
        batches = []
        for agg in rng.sample(aggs, 2):
            cmds = {}
            for u in named[agg]:
                a = devices.get(u, (MARKET, 0))[1]
                side = "offer" if grid.kind_list[a] == PV else "bid"
                cmds[u] = [
                    {"type": side, "energy": rng.uniform(0.01, 0.3), "price": rng.uniform(0, 9)}
                ]
            raw = orjson.dumps(
                {"transaction_id": "t", "aggregator_uuid": agg, "batch_commands": cmds}
            )
            batches.append((raw, agg))
        if rng.random() < 0.5:  # synced at some rounds only: stale maps must not be used
            selection.sync()
        before = dict(handlers[0]._known)
        handlers[3]._known.clear()
        handlers[3]._named.clear()
        out = []
        for h in handlers:
            items = [(decode_batch(r), registry.selected[agg], agg) for r, agg in batches]
            out.append(h.respond_many(items))
        assert out[0] == out[1] == out[2] == out[3]
        own_hits += sum(
            handlers[3]._own_devices(agg, registry.selected[agg]) is not None for agg in aggs
        )
        hits += sum(before.get(agg) is handlers[0]._known.get(agg) for _, agg in batches)
        n = states[0].n_rows
        assert all(s.n_rows == n for s in states)
        for name in ("active_bid", "active_offer", "o_asset", "o_energy", "o_rate", "o_alive"):
            a = getattr(states[0], name)[: max(n, len(states[0].active_bid))]
            assert all(np.array_equal(a, getattr(s, name)[: len(a)]) for s in states[1:]), name
    assert hits > 20  # remembered devices were used
    assert own_hits > 20  # and the synced maps
