"""Fixtures for the simulator tests: grids rebuilt from the captures and a wire-level client."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from gridfleet.exchange import channels
from gridfleet.simulator import SimConfig, Simulator
from gridfleet.simulator.grid import Grid, grid_from_dict
from tests.conftest import PROTOCOL_DIR, load_example

SESSIONS = PROTOCOL_DIR / "sessions"


def session_rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SESSIONS / name).read_text().splitlines() if line.strip()]


def _tree_to_grid(
    tree: dict[str, Any], leaf_params: Callable[[str, dict[str, Any] | None], dict[str, Any]]
) -> dict[str, Any]:
    (node,) = tree.values()

    def convert(n: dict[str, Any]) -> dict[str, Any]:
        if "children" in n:
            out: dict[str, Any] = {
                "name": n["area_name"],
                "children": [convert(c) for c in n["children"].values()],
            }
            if n.get("current_market_fee"):
                out["grid_fee_const"] = n["current_market_fee"]
            return out
        return {"name": n["area_name"], **leaf_params(n["area_name"], n.get("asset_info"))}

    return convert(node)


def _kind(name: str, info: dict[str, Any] | None) -> str:
    if name == "Market Maker":
        return "market_maker"
    if info is not None:
        if "energy_requirement_kWh" in info:
            return "load"
        if "available_energy_kWh" in info:
            return "pv"
        return "storage"
    if "Load" in name:
        return "load"
    if "PV" in name:
        return "pv"
    return "storage"


def sdk_grid_dict() -> dict[str, Any]:
    """The SDK capture's default community: loads 0.05 kWh/slot (above every recorded bid),
    PVs dark (night), a 14 kWh storage at 10 % that can buy 1.25 kWh per slot; rates 22/21."""

    def params(name: str, info: dict[str, Any] | None) -> dict[str, Any]:
        kind = _kind(name, info)
        if kind == "load":
            return {"type": "load", "energy_kWh": 0.05}
        if kind == "pv":
            return {"type": "pv", "energy_kWh": 0.0}
        if kind == "storage":
            return {
                "type": "storage",
                "capacity_kWh": 14,
                "initial_soc": 10,
                "min_soc": 10,
                "max_power_kW": 5,
            }
        return {"type": kind}

    tree = load_example("05_event_market")["data"]["grid_tree"]
    return {"market_maker_rate": 22, "feed_in_tariff_rate": 21, "grid": _tree_to_grid(tree, params)}


def raw_grid_dict() -> dict[str, Any]:
    """The probe capture's grid: loads 0.1 kWh, PVs 0.125 kWh per slot, 10 kWh storages at 60 %
    moving 0.75 kWh per slot; rates 30/10, fee 1 ct/kWh on Grid and Community."""

    def params(name: str, info: dict[str, Any] | None) -> dict[str, Any]:
        kind = _kind(name, info)
        if kind == "load":
            return {"type": "load", "energy_kWh": 0.1}
        if kind == "pv":
            return {"type": "pv", "energy_kWh": 0.125}
        if kind == "storage":
            return {
                "type": "storage",
                "capacity_kWh": 10,
                "initial_soc": 60,
                "min_soc": 10,
                "max_power_kW": 3,
            }
        return {"type": kind}

    rows = session_rows("raw_client_10_assets_with_error_probes.jsonl")
    for r in rows:
        d = json.loads(r["data"])
        if isinstance(d, dict) and d.get("event") == "market" and d.get("grid_tree"):
            return {
                "market_maker_rate": 30,
                "feed_in_tariff_rate": 10,
                "grid": _tree_to_grid(d["grid_tree"], params),
            }
    raise AssertionError("no market event in the raw session")


@pytest.fixture
def sdk_grid() -> Grid:
    return grid_from_dict(sdk_grid_dict(), seed=1)


@pytest.fixture
def raw_grid() -> Grid:
    return grid_from_dict(raw_grid_dict(), seed=2)


class WireClient:
    """A raw Redis client speaking the SDK's wire format, recording everything it receives."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url)
        self.ps = self.r.pubsub(ignore_subscribe_messages=True)
        self.ps.subscribe(
            channels.AGGREGATOR_RESPONSE,
            "/response/resume",
            "/response/pause",
            "/response/stop",
            channels.HEARTBEAT,
        )
        self.ps.psubscribe("*/response/register_participant", "external-aggregator/*", "*/events/*")
        time.sleep(0.05)
        self.inbox: list[tuple[str, Any]] = []

    def pump(self, timeout: float = 0.02) -> None:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.ps.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is None:
                if time.monotonic() >= deadline:
                    return
                continue
            ch = msg["channel"].decode()
            if msg.get("pattern") == b"*/events/*" and ch.startswith("external-aggregator/"):
                continue  # also matched by the external-aggregator/* pattern: deliver once
            try:
                data = orjson.loads(msg["data"])
            except orjson.JSONDecodeError:
                data = msg["data"]
            self.inbox.append((ch, data))

    def wait_for(self, pred: Callable[[str, Any], bool], timeout: float = 3.0) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ch, data in self.inbox[seen:]:
                if pred(ch, data):
                    return ch, data
            seen = len(self.inbox)
            if time.monotonic() > deadline:
                raise TimeoutError("expected message did not arrive")
            self.pump(0.02)

    def take(self, pred: Callable[[str, Any], bool]) -> list[tuple[str, Any]]:
        got = [(c, d) for c, d in self.inbox if pred(c, d)]
        self.inbox = [(c, d) for c, d in self.inbox if not pred(c, d)]
        return got

    def send(self, channel: str, payload: dict[str, Any]) -> None:
        self.r.publish(channel, json.dumps(payload))  # the SDK uses json.dumps

    def request(
        self,
        channel: str,
        payload: dict[str, Any],
        reply: Callable[[str, Any], bool],
        timeout: float = 3.0,
    ) -> Any:
        self.send(channel, payload)
        return self.wait_for(reply, timeout)[1]

    # the SDK's set-up sequence
    def create(self, name: str) -> str:
        tid = str(uuid.uuid4())
        d = self.request(
            channels.AGGREGATOR_COMMANDS,
            {"name": name, "type": "CREATE", "transaction_id": tid},
            lambda c, d: c == channels.AGGREGATOR_RESPONSE and d.get("transaction_id") == tid,
        )
        assert d["status"] == "ready"
        return tid

    def register(self, name: str) -> str:
        tid = str(uuid.uuid4())
        d = self.request(
            channels.register_participant(name),
            {"name": name, "transaction_id": tid},
            lambda c, d: (
                c == channels.register_participant_response(name) and d.get("transaction_id") == tid
            ),
        )
        return str(d["device_uuid"])

    def select(self, agg: str, device: str, kind: str = "SELECT") -> list[dict[str, Any]]:
        tid = str(uuid.uuid4())
        self.send(
            channels.AGGREGATOR_COMMANDS,
            {"aggregator_uuid": agg, "device_uuid": device, "type": kind, "transaction_id": tid},
        )
        self.wait_for(
            lambda c, d: c == channels.AGGREGATOR_RESPONSE and d.get("transaction_id") == tid
        )
        self.pump(0.05)
        return [
            d
            for _, d in self.take(
                lambda c, d: c == channels.AGGREGATOR_RESPONSE and d.get("transaction_id") == tid
            )
        ]

    def batch(
        self, agg: str, commands: dict[str, list[dict[str, Any]]], timeout: float = 2.0
    ) -> dict[str, Any] | None:
        """Send one BATCHED message; its response, or None if none came within ``timeout``."""
        tid = str(uuid.uuid4())
        self.send(
            channels.batch_commands(),
            {
                "type": "BATCHED",
                "transaction_id": tid,
                "aggregator_uuid": agg,
                "batch_commands": commands,
            },
        )
        try:
            return dict(
                self.wait_for(
                    lambda c, d: (
                        c.endswith("/response/batch_commands")
                        and isinstance(d, dict)
                        and d.get("transaction_id") == tid
                    ),
                    timeout,
                )[1]
            )
        except TimeoutError:
            return None

    def close(self) -> None:
        self.ps.close()
        self.r.close()


@pytest.fixture
def make_sim(redis_url: str) -> Iterator[Callable[..., Simulator]]:
    """Start simulators on the test Redis; all are stopped at teardown."""
    started: list[Simulator] = []

    def make(grid: Grid, **config: Any) -> Simulator:
        sim = Simulator(grid, redis_url=redis_url, config=SimConfig(**config)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def client(redis_url: str) -> Iterator[WireClient]:
    c = WireClient(redis_url)
    yield c
    c.close()


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
