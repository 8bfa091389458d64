"""A grid operator changes fees mid-slot: the loads still trade that slot, nothing is rejected.

Real Redis (exchange and broker), the embedded exchange (which applies a ``grid_fees`` command
from the next slot's market on, as gsy-e does), ingress, coordinator and real Celery workers.
The operator lowers the Grid's and the Community's fee from 1 to 0 ct/kWh at slot 1's market
event; slot 1's ticks then show the new fee in ``current_market_fee`` while the exchange still
charges the old one. Loads whose last bids were capped with the tree's new fee could not buy
from the Market Maker; priced with the fee of the slot's market event they buy their whole need.
Counts are the exchange's: its trade events and its trees.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gridfleet.platform.local_loop import replay_rounds
from gridfleet.platform.shard import Runtime
from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.grid import assign_aggregators, generate_grid
from tests.platform.harness import running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ASSETS, TRADERS = 300, 3


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as exchange, RedisServer() as broker:
        yield exchange, broker


def _walk(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        for node in stack.pop().values():
            yield node
            stack.append(node.get("children") or {})


def _exchange_view(events: dict[str, list[bytes]]) -> dict[str, Any]:
    """Per slot, from what the exchange sent: each load's need at the market event, what each
    load bought (trade events, each trade once), the Market Maker's sales to loads, and the fees
    the trees showed (market name -> (current, last) at the market event and at the last tick)."""
    need: dict[str, dict[str, float]] = defaultdict(dict)
    bought: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    from_mm: dict[str, int] = defaultdict(int)
    fees: dict[tuple[str, str], dict[str, tuple[Any, Any]]] = defaultdict(dict)
    seen: set[str] = set()
    for raws in events.values():
        slot = None
        for raw in raws:
            ev = orjson.loads(raw)
            if ev["event"] == "market":
                slot = ev["market_slot"]
            if ev["event"] in ("market", "tick") and ev.get("grid_tree"):
                at = "market" if ev["event"] == "market" else ev["slot_completion"]
                for node in _walk(ev["grid_tree"]):
                    if "children" in node:
                        fees[(ev["market_slot"], at)][node["area_name"]] = (
                            node.get("current_market_fee"),
                            node.get("last_market_fee"),
                        )
                    info = node.get("asset_info") or {}
                    if ev["event"] == "market" and "Load" in node["area_name"]:
                        need[slot][node["area_name"]] = info["energy_requirement_kWh"]
            if ev["event"] == "trade" and slot is not None:
                for trade in ev["trade_list"]:
                    if trade["trade_id"] in seen or "Load" not in trade["buyer"]:
                        continue
                    seen.add(trade["trade_id"])
                    bought[slot][trade["buyer"]] += trade["traded_energy"]
                    from_mm[slot] += trade["seller_origin"] == "Market Maker"
    return {"need": need, "bought": bought, "from_mm": from_mm, "fees": fees}


def test_a_fee_lowered_mid_slot_still_lets_the_loads_trade_that_slot(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    grid = generate_grid(ASSETS, houses_size=10, seed=7)  # the harness's grid: fees 1 on both
    # The traders hold the loads only: no PV or storage offers, so the loads buy from the Market
    # Maker, whose offer at the root pays every fee on the way (where a wrong fee shows).
    traders = [
        {
            "name": name,
            "assets": [a for a in entry["assets"] if "Load" in a],
            "strategy": {"name": "linear_ramp"},
        }
        for name, entry in assign_aggregators(grid, TRADERS).items()
    ]
    operator = {
        "name": "operator",
        "markets": ["Grid", "Community"],
        "market_strategy": {"name": "grid_fee_constant", "params": {"fee_const": 0}},
    }
    with running_fleet(
        exchange.url,
        broker.url,
        assets=ASSETS,
        aggregators=TRADERS,
        slots=3,
        extra_config={"aggregators": [*traders, operator]},
    ) as (fleet, _workers):
        fleet.wait()
        rejected = fleet.coordinator.tally.commands_rejected_total
        events = {agg: list(raws) for agg, raws in fleet.recorder.events.items()}
        batches = {agg: list(b) for agg, b in fleet.recorder.batches.items()}
        assert fleet.ingress.fleet is not None
        connected = fleet.ingress.fleet

    view = _exchange_view(events)
    slot1, slot2 = sorted(view["need"])[-2:]  # the first slot's trees are empty
    fees = view["fees"]
    # The exchange followed gsy-e: slot 1 opened with 1, the operator's 0 shows mid-slot as the
    # current fee, and slot 2's market event reports slot 1's market as the last one (1).
    assert fees[(slot1, "market")]["Grid"] == (1, 1.0)
    assert fees[(slot1, "90%")]["Grid"] == (None, 1.0) == fees[(slot1, "90%")]["Community"]
    assert fees[(slot2, "market")]["Grid"] == (None, 1.0)
    assert fees[(slot2, "90%")]["Grid"] == (None, 1.0)  # the last PAST market: slot 1's

    assert rejected == 0
    for slot in (slot1, slot2):
        need, bought = view["need"][slot], view["bought"][slot]
        assert len(need) >= 60 and sum(need.values()) > 0
        short = {
            n: (want, bought.get(n, 0.0))
            for n, want in need.items()
            if bought.get(n, 0.0) < want - 1e-6
        }
        assert not short, (
            f"slot {slot}: {len(short)} of {len(need)} loads did not get their need (need, bought),"
            f" e.g. {dict(list(short.items())[:3])}"
        )
        assert view["from_mm"][slot] > 0

    # The shards priced as the one-process loop does, with the same fee memory.
    expected = replay_rounds(connected, Runtime(connected.spec), events)
    for agg, bodies in expected.items():
        # an idle round sends no batch (gridfleet never sends an empty one)
        assert [b["batch_commands"] for b in batches[agg]] == [
            orjson.loads(b) for b in bodies if b != b"{}"
        ]
