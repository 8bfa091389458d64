"""Contract: every captured message parses into the models and re-serializes to equal JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridfleet.exchange import messages as p
from tests.conftest import PROTOCOL_DIR

EXAMPLES = sorted((PROTOCOL_DIR / "examples").glob("*.json"))
SESSIONS = sorted((PROTOCOL_DIR / "sessions").glob("*.jsonl"))


def _session_lines() -> list[tuple[str, int, dict]]:
    rows = []
    for path in SESSIONS:
        for no, line in enumerate(path.read_text().splitlines(), start=1):
            rows.append((path.name, no, json.loads(line)))
    return rows


def test_the_contract_files_are_there() -> None:
    assert len(EXAMPLES) >= 79
    assert len(SESSIONS) == 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_round_trips(path: Path) -> None:
    msg = json.loads(path.read_text())
    parsed = p.decode_message(msg["channel"], orjson.dumps(msg["data"]))
    assert json.loads(p.encode(parsed)) == msg["data"]


def test_every_session_line_round_trips() -> None:
    rows = _session_lines()
    assert len(rows) == 987
    for name, no, msg in rows:
        parsed = p.decode_message(msg["channel"], msg["data"])
        assert json.loads(p.encode(parsed)) == json.loads(msg["data"]), f"{name}:{no}"


def test_event_kinds_are_told_apart() -> None:
    kinds = {}
    for _, _, msg in _session_lines():
        if msg["channel"].endswith("/events/all"):
            ev = p.decode_event(msg["data"])
            kinds[type(ev).__name__] = ev
    assert set(kinds) == {"MarketEvent", "TickEvent", "TradeEvent", "FinishEvent"}
    trade = kinds["TradeEvent"]
    assert isinstance(trade, p.TradeEvent) and trade.trade_list[0].traded_energy > 0


def test_tree_nodes_are_markets_assets_or_plain_leaves() -> None:
    ev = p.decode_event(
        orjson.dumps(
            json.loads((PROTOCOL_DIR / "examples/05_event_market.json").read_text())["data"]
        )
    )
    assert isinstance(ev, p.MarketEvent)
    (root,) = ev.grid_tree.values()
    assert root.is_market and root.area_name == "Grid"
    leaves = []

    def walk(node: p.GridNode) -> None:
        if node.is_market:
            assert isinstance(node.children, dict)
            for child in node.children.values():
                walk(child)
        else:
            leaves.append(node)

    walk(root)
    own = [n for n in leaves if isinstance(n.asset_info, p.AssetInfo)]
    plain = [n for n in leaves if n.asset_info is p.UNSET]
    assert own and plain
    assert any(n.area_name == "Market Maker" for n in plain)


def test_first_slot_tick_has_empty_tree_and_null_rates() -> None:
    data = json.loads(
        (PROTOCOL_DIR / "examples/05_event_tick_first_slot_empty_grid_tree.json").read_text()
    )["data"]
    ev = p.decode_event(orjson.dumps(data))
    assert isinstance(ev, p.TickEvent)
    assert ev.grid_tree == {} and ev.market_maker_rate is None and ev.feed_in_tariff_rate is None


def test_tick_index_from_slot_completion() -> None:
    assert [p.slot_tick_index(f"{i * 10}%") for i in range(10)] == list(range(10))


def test_bad_inbound_messages_say_what_is_wrong() -> None:
    with pytest.raises(p.ProtocolError, match="not valid JSON"):
        p.decode_event(b"{nope")
    with pytest.raises(p.ProtocolError, match="grid_tree"):
        p.decode_event(
            b'{"event": "tick", "slot_completion": "10%", "market_slot": "x", "grid_tree": 5}'
        )
    with pytest.raises(p.ProtocolError, match="event"):
        p.decode_event(b'{"event": "party"}')
    with pytest.raises(p.ProtocolError, match="no protocol model"):
        p.model_for_channel("somewhere/else")


def test_command_response_reason_prefers_error_message() -> None:
    r = p.decode(
        b'{"status": "error", "error_message": "too much", "message": ""}', p.CommandResponse
    )
    assert not r.ok and r.reason == "too much"
    r = p.decode(b'{"status": "error", "message": "Invalid command type"}', p.CommandResponse)
    assert r.reason == "Invalid command type"


def test_ingress_decodes_events_without_their_trees() -> None:
    data = json.loads((PROTOCOL_DIR / "examples/05_event_trade.json").read_text())["data"]
    lite = p.decode_event_for_ingress(orjson.dumps(data))
    assert isinstance(lite, p.TradeEventLite)
    assert p.to_builtins(lite)["trade_list"] == data["trade_list"]
    tick = json.loads((PROTOCOL_DIR / "examples/05_event_tick.json").read_text())["data"]
    head = p.decode_event_for_ingress(orjson.dumps(tick))
    assert isinstance(head, p.TickEventHead) and head.has_tree
    assert (head.market_slot, head.slot_completion, head.market_maker_rate) == (
        tick["market_slot"],
        tick["slot_completion"],
        tick["market_maker_rate"],
    )
    # the raw tree is exactly the tree workers parse
    assert orjson.loads(bytes(head.grid_tree)) == tick["grid_tree"]
    empty = p.decode_event_for_ingress(orjson.dumps({**tick, "grid_tree": {}}))
    assert isinstance(empty, p.TickEventHead) and not empty.has_tree
    with pytest.raises(p.ProtocolError, match="JSON"):
        p.decode_event_for_ingress(b'{"event": "tick", "grid_tree": {"x": ')


_TICK = json.loads((PROTOCOL_DIR / "examples/05_event_tick.json").read_text())["data"]
_MARKET = json.loads((PROTOCOL_DIR / "examples/05_event_market.json").read_text())["data"]
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["feed_in_tariff_rate", "event", "x", "grid_tree", "{", '"}']),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)


@given(
    base=st.sampled_from([_TICK, _MARKET]),
    tree=st.one_of(st.just(None), st.dictionaries(st.text(max_size=6), _json_value, max_size=4)),
    drop=st.sets(st.sampled_from(["feed_in_tariff_rate", "market_maker_rate", "num_ticks"])),
    indent=st.booleans(),
)
def test_the_ingress_cut_of_a_tree_event_is_the_whole_decode(
    base: dict[str, Any], tree: Any, drop: set[str], indent: bool
) -> None:
    """The tree cut by position (gsy-e's layout) is the tree the whole decode finds, whatever
    the tree holds (the tail's own key inside it, braces in strings) and whichever keys follow."""
    data = {k: v for k, v in {**base, "grid_tree": tree}.items() if k not in drop}
    raw = orjson.dumps(data, option=orjson.OPT_INDENT_2 if indent else 0)
    cut = p.decode_event_for_ingress(raw)
    whole: Any = p.decode(raw, p.IngressEvent)  # type: ignore[arg-type]
    assert type(cut) is type(whole)
    fields = [msgspec.structs.asdict(e) for e in (cut, whole)]
    for f in fields:
        f["grid_tree"] = orjson.loads(bytes(f["grid_tree"]))
    assert fields[0] == fields[1]
    assert fields[0]["grid_tree"] == tree


def test_the_cut_is_taken_for_gsy_e_events_and_a_bad_tree_rides_on_to_its_worker() -> None:
    raw = orjson.dumps(_TICK)
    assert p._cut_tree_event(raw) is not None  # the fast path, not the whole decode
    # Not JSON inside the tree: the ingress does not read it; the worker's parse refuses it.
    broken = raw.replace(b'"grid_tree":{', b'"grid_tree":{"x":[1,}, ', 1)
    head = p.decode_event_for_ingress(broken)
    assert isinstance(head, p.TickEventHead)
    with pytest.raises(p.ProtocolError):
        p.decode(bytes(head.grid_tree), p.GridTree)
    # Not an object where the tree goes: the whole decode names what is wrong.
    with pytest.raises(p.ProtocolError):
        p.decode_event_for_ingress(raw.replace(b'"grid_tree":{', b'"grid_tree":[{', 1))
