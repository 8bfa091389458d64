"""The simulator against a wire-level client on a real Redis: SDK flow, rejections, crashes, quirks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gridfleet.exchange import channels
from tests.conftest import PROTOCOL_DIR, load_example
from tests.simulator.conftest import WireClient

pytestmark = pytest.mark.integration

SDK_ASSETS = [
    "Load 1 L13",
    "Load 2 L21",
    "Load 3 L17",
    "PV 1 (4kW)",
    "PV 3 (5kW)",
    "Tesla Powerwall 3",
]


def first_response(example: str) -> dict[str, Any]:
    (responses,) = [v for v in load_example(example)["data"]["responses"].values()][:1]
    return dict(responses[0])


def shape(resp: dict[str, Any]) -> tuple[Any, ...]:
    return (resp.get("command"), resp.get("status"), frozenset(resp))


def is_event(kind: str, agg: str) -> Any:
    return lambda c, d: (
        c == channels.aggregator_events(agg) and isinstance(d, dict) and d.get("event") == kind
    )


def setup_sdk(client: WireClient, names: list[str]) -> tuple[str, dict[str, str]]:
    agg = client.create("oracle")
    devices = {}
    for n in names:
        devices[n] = client.register(n)
        (answer,) = client.select(agg, devices[n])
        assert answer["status"] == "SELECTED"
    return agg, devices


def test_sdk_client_registers_selects_bids_and_trades(
    make_sim: Any, sdk_grid: Any, client: WireClient
) -> None:
    sim = make_sim(sdk_grid, tick_interval=None, slots=3)
    agg, dev = setup_sdk(client, SDK_ASSETS)
    # First slot: tick events with an empty tree and null rates, no market event (gsy-e quirk).
    sim.advance()
    _, tick = client.wait_for(is_event("tick", agg))
    first = load_example("05_event_tick_first_slot_empty_grid_tree")["data"]
    assert tick == {**first, "market_slot": "2024-06-01T00:00"}
    for _ in range(10):
        sim.advance()
    _, market = client.wait_for(is_event("market", agg))
    captured = load_example("05_event_market")["data"]
    assert set(market) == set(captured)
    assert market["market_slot"] == "2024-06-01T00:15" and market["slot_completion"] == "0%"
    assert (market["feed_in_tariff_rate"], market["market_maker_rate"]) == (21, 22)
    (root,) = market["grid_tree"].values()
    assert set(root) == set(next(iter(captured["grid_tree"].values())))
    flat: dict[str, Any] = {}

    def walk(nodes: dict[str, Any]) -> None:
        for u, n in nodes.items():
            flat[u] = n
            walk(n.get("children", {}))

    walk(market["grid_tree"])
    own = {u: n for u, n in flat.items() if "asset_info" in n}
    assert set(own) == set(dev.values())  # asset_info only on our own assets
    load = dev["Load 1 L13"]
    assert own[load]["asset_info"]["energy_requirement_kWh"] == 0.05
    client.wait_for(is_event("tick", agg))
    # The SDK's bid JSON, verbatim shape (06_batch_command_bid).
    resp = client.batch(
        agg,
        {
            load: [
                {
                    "type": "bid",
                    "energy": 0.02,
                    "price": 0.6,
                    "replace_existing": True,
                    "time_slot": None,
                }
            ]
        },
    )
    assert resp is not None
    captured_resp = load_example("07_batch_response_bid-ready")["data"]
    assert set(resp) == set(captured_resp)
    (r,) = resp["responses"][load]
    assert shape(r) == shape(first_response("07_batch_response_bid-ready"))
    bid = json.loads(r["bid"])
    assert bid["energy_rate"] == 30.0 and bid["time_slot"] == "2024-06-01T00:15:00"
    # 30 ct/kWh = market maker 22 + Grid fee 4 + Community fee 4: it clears at the next tick.
    sim.advance()
    _, trade = client.wait_for(is_event("trade", agg))
    assert set(trade) == set(load_example("05_event_trade")["data"])
    (t,) = trade["trade_list"]
    assert set(t) == set(load_example("05_event_trade")["data"]["trade_list"][0])
    assert (t["asset_id"], t["buyer"], t["seller"], t["seller_origin"]) == (
        load,
        "Load 1 L13",
        "anonymous",
        "Market Maker",
    )
    assert t["traded_energy"] == pytest.approx(0.02) and t["trade_price"] == pytest.approx(0.6)
    assert t["total_fee"] == pytest.approx(0.02 * 8)
    info = client.batch(agg, {load: [{"type": "device_info"}]})
    assert info is not None
    assert info["responses"][load][0]["device_info"]["energy_requirement_kWh"] == pytest.approx(
        0.03
    )
    assert sim.counts.trades == 1 and sim.counts.energy_traded_kwh == pytest.approx(0.02)
    for _ in range(19):
        sim.advance()
    client.wait_for(is_event("finish", agg))
    _, fin = client.wait_for(lambda c, d: c == "grid/events/finish")
    assert fin == load_example("08_market_area_event_finish_on_slugified_market_name")["data"]
    assert sim.finished.is_set()


# (example batch, example response, asset name, commands) for every rejection in the README
REJECTIONS = [
    (
        "07_batch_response_bid_energy_above_requirement",
        "H1 Load0",
        [{"type": "bid", "energy": 1.2, "price": 10}],
    ),
    (
        "07_batch_response_bid_negative_energy",
        "H1 Load0",
        [{"type": "bid", "energy": -0.1, "price": 1}],
    ),
    ("07_batch_response_bid_zero_energy", "H1 Load0", [{"type": "bid", "energy": 0, "price": 1}]),
    (
        "07_batch_response_bid_negative_price",
        "H1 Load0",
        [{"type": "bid", "energy": 0.05, "price": -1}],
    ),
    ("07_batch_response_bid_on_pv", "H1 PV1", [{"type": "bid", "energy": 0.01, "price": 1}]),
    (
        "07_batch_response_offer_on_load",
        "H1 Load0",
        [{"type": "offer", "energy": 0.01, "price": 1}],
    ),
    (
        "07_batch_response_offer_energy_above_available",
        "H1 PV1",
        [{"type": "offer", "energy": 1.25, "price": 10}],
    ),
    (
        "07_batch_response_offer_negative_price",
        "H1 PV1",
        [{"type": "offer", "energy": 0.0625, "price": -5}],
    ),
    (
        "07_batch_response_unknown_command_type",
        "H1 Load0",
        [{"type": "foo", "energy": 0.01, "price": 1}],
    ),
    ("07_batch_response_missing_type", "H1 Load0", [{"energy": 0.01, "price": 1}]),
    ("07_batch_response_list_bids", "H1 Load0", [{"type": "list_bids"}]),
    ("07_batch_response_list_offers", "H1 PV1", [{"type": "list_offers"}]),
    ("07_batch_response_device_info", "H1 Load0", [{"type": "device_info"}]),
    ("07_batch_response_delete_bid_all", "H1 Load0", [{"type": "delete_bid"}]),
    (
        "07_batch_response_delete_bid_unknown_id",
        "H1 Load0",
        [{"type": "delete_bid", "bid_id": "nonexistent"}],
    ),
    ("07_batch_response_ok_bid", "H1 Load0", [{"type": "bid", "energy": 0.1, "price": 2.0}]),
    (
        "07_batch_response_offer-ready",
        "H1 PV1",
        [{"type": "offer", "energy": 0.025, "price": 0.4375, "replace_existing": True}],
    ),
]


@pytest.fixture
def probe(
    make_sim: Any, raw_grid: Any, client: WireClient
) -> tuple[Any, WireClient, str, dict[str, str]]:
    sim = make_sim(raw_grid, tick_interval=None, slots=4)
    names = ["H1 Load0", "H1 PV1", "H1 Storage2", "H4 Load9"]
    agg = client.create("probe")
    dev = {n: client.register(n) for n in names}
    for n in names[:3]:
        client.select(agg, dev[n])
    for _ in range(11):
        sim.advance()  # into slot 2 (00:15), where trees and rates are real
    return sim, client, agg, dev


def test_every_rejection_and_command_answers_in_the_captured_form(probe: Any) -> None:
    _, client, agg, dev = probe
    for example, name, cmds in REJECTIONS:
        resp = client.batch(agg, {dev[name]: cmds})
        assert resp is not None, example
        (got,) = resp["responses"][dev[name]]
        want = first_response(example)
        assert shape(got) == shape(want), example
        if "error_message" in want:
            head = want["error_message"].split(" with arguments ")[0].rsplit(" ", 1)[0]
            assert got["error_message"].startswith(head), (example, got["error_message"])
            assert got["error_message"].endswith(want["error_message"][-1]), example
        if "message" in want and want["status"] == "error":
            assert got["message"] == want["message"].replace(
                want.get("area_uuid", ""), dev[name]
            ), example


def test_unknown_and_unselected_assets_are_silently_dropped(probe: Any) -> None:
    _, client, agg, dev = probe
    assert (
        client.batch(
            agg,
            {"31b7be79-cd9a-4549-aef8-35b1543e54f4": [{"type": "bid", "energy": 0.01, "price": 1}]},
            timeout=0.3,
        )
        is None
    )
    assert (
        client.batch(
            agg, {dev["H4 Load9"]: [{"type": "bid", "energy": 0.001, "price": 1}]}, timeout=0.3
        )
        is None
    )
    mixed = client.batch(
        agg,
        {
            dev["H1 Load0"]: [{"type": "bid", "energy": 0.1, "price": 2.0}],
            "05290645-fe00-4db2-ac3f-22f2b72aaf86": [{"type": "bid", "energy": 0.01, "price": 1}],
        },
    )
    assert mixed is not None and list(mixed["responses"]) == [dev["H1 Load0"]]


def test_crash_batches_get_errors_and_the_exchange_stays_up(probe: Any) -> None:
    sim, client, agg, dev = probe
    crashes = sorted(p.stem for p in (PROTOCOL_DIR / "examples").glob("11_CRASH_*.json"))
    assert len(crashes) == 5
    for name in crashes:
        (cmds,) = load_example(name)["data"]["batch_commands"].values()
        target = dev["H1 PV1"] if cmds[0]["type"] == "offer" else dev["H1 Load0"]
        resp = client.batch(agg, {target: cmds})
        assert resp is not None, name
        (got,) = resp["responses"][target]
        assert got["status"] == "error" and got["command"] == cmds[0]["type"], name
        assert "error_message" in got and got["market_type"] == "Spot Market", name
    ok = client.batch(agg, {dev["H1 Load0"]: [{"type": "bid", "energy": 0.05, "price": 1}]})
    assert ok is not None and ok["responses"][dev["H1 Load0"]][0]["status"] == "ready"
    sim.advance()
    assert sim.error is None and not sim.finished.is_set()


def test_late_order_naming_the_closing_slot_is_refused_but_untimed_one_lands(probe: Any) -> None:
    sim, client, agg, dev = probe
    for _ in range(9):
        sim.advance()  # the 90 % tick of 00:15
    load = dev["H1 Load0"]
    late = client.batch(
        agg,
        {load: [{"type": "bid", "energy": 0.001, "price": 0.03, "time_slot": "2024-06-01T00:15"}]},
    )
    assert late is not None
    assert shape(late["responses"][load][0]) == shape(
        first_response("07_batch_response_late_at_90pct_current_slot")
    )
    sim.advance()  # the slot closes, 00:30 opens
    untimed = client.batch(agg, {load: [{"type": "bid", "energy": 0.001, "price": 0.03}]})
    assert untimed is not None
    got = untimed["responses"][load][0]
    assert shape(got) == shape(first_response("07_batch_response_late_no_time_slot_after_cycle"))
    assert json.loads(got["bid"])["time_slot"] == "2024-06-01T00:30:00"


def test_market_commands_dso_stats_and_grid_fees(
    make_sim: Any, raw_grid: Any, client: WireClient
) -> None:
    sim = make_sim(raw_grid, tick_interval=None, slots=3)
    agg = client.create("dso")
    house = client.register("house-2")  # markets register by slug
    client.select(agg, house)
    for _ in range(11):
        sim.advance()
    resp = client.batch(
        agg,
        {
            house: [
                {"type": "dso_market_stats", "data": {}},
                {"type": "grid_fees", "data": {"fee_const": 5}},
            ]
        },
    )
    assert resp is not None
    stats, fees = resp["responses"][house]
    want_stats, want_fees = load_example(
        "07_batch_response_dso_market_stats-ready_grid_fees-ready"
    )["data"]["responses"].popitem()[1]
    assert shape(stats) == shape(want_stats) and set(stats["market_stats"]) == set(
        want_stats["market_stats"]
    )
    assert fees == {**want_fees, "area_uuid": house}
    pct = client.batch(agg, {house: [{"type": "grid_fees", "data": {"fee_percent": 10}}]})
    assert pct is not None and pct["responses"][house][0]["market_fee_percent"] == "10"
    bad = client.batch(agg, {house: [{"type": "grid_fees", "data": {"fee_const": "x"}}]})
    assert bad is not None and bad["responses"][house][0]["status"] == "error"
    assert (
        sim.state.fee_percent[
            sim.grid.markets[[m.name for m in sim.grid.markets].index("House 2")].index
        ]
        == 10
    )


def test_aggregator_command_quirks(make_sim: Any, raw_grid: Any, client: WireClient) -> None:
    make_sim(raw_grid, tick_interval=None, slots=2)
    a1 = client.create("one")
    a2 = client.create("two")
    dup = client.request(
        channels.AGGREGATOR_COMMANDS,
        {"name": "again", "type": "CREATE", "transaction_id": a1},
        lambda c, d: (
            c == channels.AGGREGATOR_RESPONSE
            and d.get("transaction_id") == a1
            and d.get("status") == "error"
        ),
    )
    assert set(dup) == set(load_example("02_aggregator_create_error_duplicate")["data"])
    dev = client.register("H1 Load0")
    (ok,) = client.select(a1, dev)
    assert (
        set(ok) == set(load_example("04_aggregator_select_response")["data"])
        and ok["status"] == "SELECTED"
    )
    (err,) = client.select(a2, dev)
    assert err["msg"] == f"Device already have selected {a1}"
    assert set(err) == set(load_example("04_aggregator_select_error_already_selected")["data"])
    (bad_unselect,) = client.select(a2, dev, "UNSELECT")
    assert bad_unselect["msg"] == load_example("04_aggregator_unselect_error")["data"]["msg"]
    twice = client.select(a1, dev, "UNSELECT")
    assert len(twice) == 2 and twice[0] == twice[1] and twice[0]["status"] == "UNSELECTED"
    deleted = client.request(
        channels.AGGREGATOR_COMMANDS,
        {"aggregator_uuid": a2, "device_uuid": dev, "type": "DELETE", "transaction_id": "d1"},
        lambda c, d: c == channels.AGGREGATOR_RESPONSE and d.get("transaction_id") == "d1",
    )
    assert deleted == {"status": "deleted", "aggregator_uuid": a2, "transaction_id": "d1"}
    gone = client.request(
        channels.AGGREGATOR_COMMANDS,
        {"aggregator_uuid": a2, "device_uuid": dev, "type": "DELETE", "transaction_id": "d2"},
        lambda c, d: c == channels.AGGREGATOR_RESPONSE and d.get("transaction_id") == "d2",
    )
    assert gone["status"] == "error"
    # garbage on every inbound channel is ignored, never fatal
    for ch in (
        channels.AGGREGATOR_COMMANDS,
        channels.batch_commands(),
        "H1 Load0/register_participant",
        "/pause",
    ):
        client.r.publish(ch, b"not json{")
        client.r.publish(ch, b"[1, 2]")
    client.send(
        channels.batch_commands(), {"type": "BATCHED", "aggregator_uuid": a1, "batch_commands": [1]}
    )
    assert client.create("still-alive")


def test_paused_start_heartbeat_and_sim_control(
    make_sim: Any, raw_grid: Any, client: WireClient
) -> None:
    sim = make_sim(raw_grid, tick_interval=0.05, slots=1, paused=True, heartbeat_interval=0.2)
    agg = client.create("ctl")
    client.select(agg, client.register("H1 Load0"))
    _, hb = client.wait_for(lambda c, d: c == channels.HEARTBEAT)
    assert set(hb) == {"time"} and isinstance(hb["time"], int)
    client.pump(0.3)
    assert not client.take(is_event("tick", agg))  # paused: nothing dispatched
    resumed = client.request(
        "/resume", {"transaction_id": "resume-1"}, lambda c, d: c == "/response/resume"
    )
    assert resumed == load_example("10_sim_control_response_resume")["data"]
    client.wait_for(is_event("tick", agg))
    paused = client.request("/pause", {"transaction_id": "p"}, lambda c, d: c == "/response/pause")
    assert paused["status"] == "success" and sim.paused
    stopped = client.request("/stop", {"transaction_id": "s"}, lambda c, d: c == "/response/stop")
    assert stopped["command"] == "stop"
    client.wait_for(is_event("finish", agg))
    assert sim.wait(2)
