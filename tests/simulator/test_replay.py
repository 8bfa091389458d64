"""Replay the client side of the captured sessions; responses must have the recorded shapes.

The simulator runs in manual mode and is advanced once per recorded tick event, so every
recorded client message is sent at the same point of the market (slot, tick) as in the capture.
Device uuids differ (ours come from our register answers) and are mapped both ways.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gridfleet.exchange import channels
from tests.simulator.conftest import UUID_RE, WireClient, session_rows

pytestmark = pytest.mark.integration


def _shape(value: Any) -> Any:
    """Keys, statuses and command names; not values (ids, rates and times differ)."""
    if isinstance(value, dict):
        return {
            k: _shape(v)
            if k in ("responses", "status", "command") or isinstance(v, dict | list)
            else type(v).__name__
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if isinstance(value, str):
        return value
    return type(value).__name__


def _response_shape(resp: dict[str, Any]) -> dict[str, Any]:
    out = {k: type(v).__name__ for k, v in resp.items() if k != "responses"}
    out["responses"] = [
        [(r.get("command"), r.get("status"), tuple(sorted(r))) for r in cmds]
        for cmds in resp["responses"].values()
    ]
    return out


def replay(
    name: str, grid: Any, make_sim: Any, client: WireClient, max_ticks: int
) -> tuple[int, int]:
    rows = session_rows(name)
    sim = make_sim(grid, tick_interval=None, slots=max_ticks // 10 + 1)
    ours: dict[str, str] = {}  # recorded device uuid -> ours
    recorded_batch_responses = {
        json.loads(r["data"])["transaction_id"]: json.loads(r["data"])
        for r in rows
        if r["channel"].endswith("/response/batch_commands")
    }
    recorded_register = {
        r["channel"]: json.loads(r["data"])
        for r in rows
        if r["channel"].endswith("/response/register_participant")
    }
    ticks = compared = 0
    for row in rows:
        ch, data = row["channel"], json.loads(row["data"])
        if ch.endswith("/events/all") and data.get("event") == "tick":
            ticks += 1
            if ticks > max_ticks:
                break
            sim.advance()
        elif ch == channels.AGGREGATOR_COMMANDS:
            data = {k: ours.get(v, v) if isinstance(v, str) else v for k, v in data.items()}
            client.send(ch, data)
            if data["type"] in ("CREATE", "SELECT"):
                _, got = client.wait_for(
                    lambda c, d, t=data["transaction_id"]: (
                        c == channels.AGGREGATOR_RESPONSE and d.get("transaction_id") == t
                    )
                )
                assert got["status"] in ("ready", "SELECTED"), got
        elif ch.endswith("/register_participant") and "/response/" not in ch:
            name_ = ch[: -len("/register_participant")]
            client.send(ch, data)
            _, got = client.wait_for(
                lambda c, d, n=name_: c == channels.register_participant_response(n)
            )
            recorded = recorded_register[channels.register_participant_response(name_)]
            ours[recorded["device_uuid"]] = got["device_uuid"]
            assert _shape(got) == _shape(recorded)
        elif ch == "/resume":
            got = client.request(ch, data, lambda c, d: c == "/response/resume")
            assert got["status"] == "success"
        elif ch == channels.batch_commands():
            commands = {ours.get(k, k): v for k, v in data["batch_commands"].items()}
            resp = client.batch(
                data["aggregator_uuid"],
                commands,
                timeout=1.0 if data["transaction_id"] in recorded_batch_responses else 0.15,
            )
            recorded = recorded_batch_responses.get(data["transaction_id"])
            if recorded is None:
                assert resp is None, f"no answer expected to {data}"
                continue
            assert resp is not None, f"no answer to {data}"
            want = _response_shape(recorded)
            got_shape = _response_shape(resp)
            diff = [
                (i, g, w)
                for i, (g, w) in enumerate(
                    zip(got_shape["responses"], want["responses"], strict=False)
                )
                if g != w
            ]
            assert got_shape == want, f"tick {ticks}: {data['batch_commands']}\n{diff}"
            # the answer lists the same devices, in the same order
            theirs = list(recorded["responses"])
            assert [ours.get(k, k) for k in theirs] == list(resp["responses"])
            compared += 1
    assert not any(UUID_RE.fullmatch(k) and k not in ours.values() for k in ours.values())
    return ticks, compared


def test_replay_sdk_session(make_sim: Any, sdk_grid: Any, client: WireClient) -> None:
    ticks, compared = replay(
        "sdk_basic_strategies_default_community.jsonl", sdk_grid, make_sim, client, max_ticks=80
    )
    assert ticks == 80 and compared == 196


def test_replay_raw_probe_session(make_sim: Any, raw_grid: Any, client: WireClient) -> None:
    ticks, compared = replay(
        "raw_client_10_assets_with_error_probes.jsonl", raw_grid, make_sim, client, max_ticks=80
    )
    assert ticks == 80 and compared >= 80
