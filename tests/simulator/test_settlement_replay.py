"""Every file of the settlement capture, replayed against the embedded exchange: one test each.

The captured session's requests are sent again by a raw wire client (its uuids mapped to this
grid's assets by name, its dates moved to today: gsy-e reads a time-only ``time_slot`` as
today's date, so the run starts today), in the capture's order: the bootstrap batch during the
first slot, the template's batches at 00:15 and 00:30, the probes, a re-measurement, and the two
orders that made gsy-e exit. What the exchange answered and sent is kept per example file, and
each file's test compares it with the capture: the same keys (and order of keys where clients
see it), the same commands, statuses and market types, answer by answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, time
from typing import Any

import pytest

from gridfleet.simulator import SimConfig, Simulator
from tests.conftest import PROTOCOL_DIR
from tests.simulator.conftest import WireClient
from tests.simulator.test_settlement import PROBES, TEMPLATE, Session, settlement_grid

pytestmark = pytest.mark.integration

CAPTURE = PROTOCOL_DIR / "settlement"
EXAMPLE_FILES = sorted(p.stem for p in (CAPTURE / "examples").glob("*.json"))
CAPTURED_DAY = "2026-12-02"
TODAY = datetime.now(UTC).date()
DAY = TODAY.isoformat()


def captured(name: str) -> dict[str, Any]:
    return dict(json.loads((CAPTURE / "examples" / f"{name}.json").read_text())["data"])


def captured_names() -> dict[str, str]:
    """Captured device uuid -> asset name, from the session's registration answers."""
    out = {}
    for line in (CAPTURE / "session_settlement_sdk_template.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["channel"].endswith("/response/register_participant"):
            out[json.loads(row["data"])["device_uuid"]] = row["channel"].split("/")[0]
    return out


class Replay:
    """The session replayed; ``ours[example]`` is what this exchange did for that file."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.names = captured_names()
        self.ours: dict[str, Any] = {}

    def request(self, name: str) -> dict[str, list[dict[str, Any]]]:
        """A captured request's commands per asset name, dates moved to today."""
        text = json.dumps(captured(name)["batch_commands"]).replace(CAPTURED_DAY, DAY)
        # file 22 comes from a second, short session (other uuids): its asset is the probe load
        return {self.names.get(uuid, "Probe Load"): cmds for uuid, cmds in json.loads(text).items()}

    def send(self, name: str) -> None:
        """Send the captured request ``name``; keep the answers under its response's name."""
        answers = self.s.batch(self.request(name))
        self.ours[name] = answers
        self.ours[name.replace("_request", "_response")] = answers

    def event(self, example: str, kind: str) -> None:
        self.ours[example] = self.s.last_event(kind)

    def trade_of(self, example: str, match: Any) -> None:
        self.s.client.pump(0.1)
        for _, data in reversed(self.s.client.inbox):
            if isinstance(data, dict) and data.get("event") == "trade":
                for trade in data["trade_list"]:
                    if match(trade):
                        self.ours[example] = trade
                        return
        raise AssertionError(f"no trade for {example}")


@pytest.fixture(scope="module")
def replay(redis_server: Any) -> Iterator[Replay]:
    url = redis_server.url
    start = datetime.combine(TODAY, time())
    sim = Simulator(
        settlement_grid(), url, SimConfig(tick_interval=None, slots=9, start=start)
    ).start()
    client = WireClient(url)
    try:
        r = Replay(Session(sim, client))
        s = r.s
        # 00:00: the bootstrap (forecasts for 00:15, measurements for 00:00); the probes measure too
        r.send("01_seed_batch_sent_by_other_aggregator_request")
        s.batch(
            {
                "Probe Load": [
                    {"type": "set_energy_measurement", "energy_measurement": {f"{DAY}T00:00": 0.7}}
                ],
                "Probe PV": [
                    {"type": "set_energy_measurement", "energy_measurement": {f"{DAY}T00:00": 0.3}}
                ],
            }
        )
        s.advance(11)  # 00:15: the first settlement market (00:00) opens
        r.event("02_event_market_template_first_settlement_slot", "market")
        r.send("05_template_batch_0015_request")
        for probe in (
            "10_probe_settlement_bid_energy_gt_deviation",
            "11_probe_settlement_offer_wrong_sign_load",
            "14_probe_settlement_bid_wrong_sign_pv",
            "12_probe_settlement_bid_valid",
            "13_probe_settlement_offer_valid_pv",
            "15_probe_measurement_bad_slot_key",
            "16_probe_measurement_iso_offset_key",
            "17_probe_measurement_negative",
            "19_probe_bid_time_slot_is_spot_slot",
        ):
            r.send(f"{probe}_request")
        s.advance()  # the probe's 20 ct/kWh bid meets the PVs' offers
        r.event("04_event_tick_template_partially_settled", "tick")
        r.trade_of(
            "06_event_trade_probe_settlement_bid_bought", lambda t: t["buyer"] == "Probe Load"
        )
        r.trade_of(
            "06_event_trade_template_settlement_offer_sold",
            lambda t: t["seller"] in ("H1 PV", "H2 PV"),
        )
        r.send("18_probe_list_settlement_orders_request")
        # a cheaper offer of H1 PV's rest: the template loads' 5 ct/kWh bids buy it
        s.batch(
            {"H1 PV": [{"type": "offer", "energy": 0.2, "price": 0.8, "time_slot": f"{DAY}T00:00"}]}
        )
        s.advance()
        r.trade_of(
            "06_event_trade_template_settlement_bid_bought",
            lambda t: t["buyer"] in ("H1 General Load", "H2 General Load"),
        )
        s.advance(9)  # 00:30
        r.send("05_template_batch_0030_request")
        r.send("20_probe_remeasure_time_only_key_and_future_slot_request")
        s.advance(10)  # 00:45: the re-measurement of 00:15 is applied
        r.event("07_event_market_prober_after_remeasurement", "market")
        s.advance(10)  # 01:00: four settlement markets open
        r.event("03_event_market_template_four_open_settlement_slots", "market")
        s.advance(10)  # 01:15: 00:00 has closed; gsy-e exits on these two
        r.send("21_probe_settlement_bid_closed_time_slot_CRASH_request")
        r.send("22_probe_bid_unparsable_time_slot_CRASH_request")
        s.advance()
        assert sim.error is None and not sim.finished.is_set()
        yield r
    finally:
        client.close()
        sim.stop()


def asset_infos(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for node in tree.values():
        if "asset_info" in node:
            out[node["area_name"]] = node["asset_info"]
        out.update(asset_infos(node.get("children", {})))
    return out


def answer_shape(answer: dict[str, Any]) -> tuple[Any, ...]:
    return (
        answer.get("command"),
        answer.get("status"),
        answer.get("market_type"),
        frozenset(answer),
    )


def test_every_example_file_has_a_test() -> None:
    assert len(EXAMPLE_FILES) == 37


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_the_exchange_answers_like_the_capture(replay: Replay, example: str) -> None:
    data = captured(example)
    ours = replay.ours.get(example)
    assert ours is not None, f"the replay did not produce {example}"
    if example.endswith("CRASH_request"):
        # gsy-e exited on these without an answer; this exchange answers an error and goes on
        for answers in ours.values():
            assert [a["status"] for a in answers] == ["error"]
        return
    if example.endswith("_request"):
        # every command of the captured request is answered, in order (the answers' shapes
        # are the response file's test; gsy-e labels a refused PV bid "offer")
        for name, cmds in replay.request(example).items():
            assert len(ours[name]) == len(cmds), name
            for answer, cmd in zip(ours[name], cmds, strict=True):
                assert answer["command"] in (_command(cmd), "offer"), (name, cmd)
        return
    if "responses" in data:
        for uuid, answers in data["responses"].items():
            name = replay.names[uuid]
            assert [answer_shape(a) for a in ours[name]] == [answer_shape(a) for a in answers], name
            for mine, theirs in zip(ours[name], answers, strict=True):
                for key in ("bid", "offer"):
                    if isinstance(theirs.get(key), str):  # the order JSON inside
                        assert list(json.loads(mine[key])) == list(json.loads(theirs[key]))
        return
    if example.startswith("06_"):
        (trade,) = [t for t in data["trade_list"]][:1]
        assert list(ours) == list(trade)
        return
    # market and tick events: the same top level, the same asset_info keys in the same order
    assert list(ours) == list(data)
    assert (ours["event"], ours["slot_completion"]) == (data["event"], data["slot_completion"])
    theirs = asset_infos(data["grid_tree"])
    mine = asset_infos(ours["grid_tree"])
    assert theirs, example
    for name, info in theirs.items():
        assert list(mine[name]) == list(info), name
        want_slots = len(info["unsettled_deviation_kWh"])
        assert len(mine[name]["unsettled_deviation_kWh"]) == want_slots, name


def _command(cmd: dict[str, Any]) -> str:
    t = cmd["type"]
    return {"delete_bid": "bid_delete", "delete_offer": "offer_delete"}.get(t, t)


def test_the_replayed_numbers_follow_the_capture_rules(replay: Replay) -> None:
    s = replay.s
    state = s.sim.state
    assert state.settlement is not None
    # 02: the bootstrap's measurements against nothing bought: +1.23 per load, -0.87 per PV
    first = asset_infos(replay.ours["02_event_market_template_first_settlement_slot"]["grid_tree"])
    assert first["H1 General Load"]["unsettled_deviation_kWh"] == {f"{DAY}T00:00": 1.23}
    assert first["H2 PV"]["unsettled_deviation_kWh"] == {f"{DAY}T00:00": -0.87}
    # 06: pay as bid, the probe's 20 ct/kWh
    probe = replay.ours["06_event_trade_probe_settlement_bid_bought"]
    assert probe["trade_price"] == pytest.approx(20 * probe["traded_energy"])
    # 20: "00:15" (time-only) re-measured Probe Load's 00:15 at 0.9; the 01:00 key was dropped
    after = asset_infos(replay.ours["07_event_market_prober_after_remeasurement"]["grid_tree"])
    grid = s.sim.engine.grid
    a = grid.asset_name.index("Probe Load")
    slot = state.settlement.slots.get(f"{DAY}T00:15")
    assert slot is not None
    assert after["Probe Load"]["unsettled_deviation_kWh"][f"{DAY}T00:15"] == pytest.approx(
        0.9 - slot.bought[a]
    )
    # 03: 01:00's market event shows 00:00 .. 00:45
    four = asset_infos(
        replay.ours["03_event_market_template_four_open_settlement_slots"]["grid_tree"]
    )
    assert list(four["H1 PV"]["unsettled_deviation_kWh"]) == [
        f"{DAY}T00:00",
        f"{DAY}T00:15",
        f"{DAY}T00:30",
        f"{DAY}T00:45",
    ]


def test_names_cover_the_capture() -> None:
    assert set(captured_names().values()) == set(TEMPLATE + PROBES)
