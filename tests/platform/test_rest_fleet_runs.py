"""A whole fleet over REST + websocket against the embedded exchange's REST door: real aiohttp
server, real httpx and websockets clients, real Celery workers, on loopback.

Every figure is the exchange's: its deadline report (on time, late, missing per aggregator and
round), its token issuer and the journal of the batches it applied (tests/platform/harness.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from gridfleet.platform.codec import unpackb
from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.grid import LOAD, PV, generate_grid
from gridfleet.simulator.rest_faults import BatchFault, RestFaults
from tests.conftest import load_example
from tests.platform.harness import Fleet, running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TICK_S = 0.5


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as exchange, RedisServer() as broker:
        yield exchange, broker


def fleet_options(**extra: Any) -> dict[str, Any]:
    return {
        "assets": 2000,
        "aggregators": 20,
        "slots": 3,  # the exchange's first slot has no market yet: 2 slots of trading
        "tick_interval": TICK_S,
        "shard_size": 500,
        **extra,
    }


def answered_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["ticks"] if r["aggregators"]]


def wait_rounds(fleet: Fleet, n: int, timeout: float = 60) -> None:
    """Until the exchange has seen ``n`` rounds answered on time by every aggregator."""
    deadline = time.monotonic() + timeout
    while sum(1 for r in fleet.sim.report()["ticks"] if r["on_time"]) < n:
        assert time.monotonic() < deadline, "the fleet never got going"
        time.sleep(0.05)


def brief(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(round, slot completion, on time, late, missing, idle) per row: a readable failure."""
    return [
        (r["round"], r["slot_completion"], r["on_time"], r["late"], r["missing"], r["idle"])
        for r in rows
    ]


def all_on_time(rows: list[dict[str, Any]]) -> bool:
    return all(r["on_time"] + r["idle"] == r["aggregators"] for r in rows)


def test_a_rest_fleet_is_on_time_and_sends_what_the_redis_fleet_sends(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    reports: dict[str, dict[str, Any]] = {}
    commands: dict[str, dict[tuple[str, str], list[Any]]] = {}
    for transport in ("redis", "rest"):
        redis.Redis.from_url(broker.url).flushall()
        with running_fleet(exchange.url, broker.url, **fleet_options(transport=transport)) as (
            fleet,
            _workers,
        ):
            reports[transport] = fleet.wait()
            commands[transport] = fleet.journal.by_round()
            twice = {k: n for k, n in fleet.journal.transaction_ids().items() if n > 1}
            if transport == "rest":
                door = fleet.sim.rest_door
                assert door is not None and door.aggregators, "the REST door served no aggregator"
        assert twice == {}, transport

    rest = reports["rest"]["summary"]
    assert reports["rest"]["summary"]["rounds"] == 20, rest
    assert rest["aggregator_rounds"] == 20 * 20, rest
    assert rest["late"] == 0 and rest["missing"] == 0, rest
    assert rest["on_time_ratio"] == 1.0, rest
    assert all_on_time(answered_rows(reports["rest"]))
    assert reports["redis"]["summary"]["on_time_ratio"] == 1.0, reports["redis"]["summary"]
    # The same commands, aggregator by aggregator and round by round.
    assert commands["rest"].keys() == commands["redis"].keys()
    differing = [k for k in commands["rest"] if commands["rest"][k] != commands["redis"][k]]
    assert differing == [], differing[:3]
    assert sum(len(v) for v in commands["rest"].values()) > 1000


def test_a_token_expiring_mid_run_is_renewed_with_no_round_lost(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    with running_fleet(
        exchange.url,
        broker.url,
        **fleet_options(transport="rest", rest={"token_lifetime_s": 3.0}),
    ) as (fleet, _workers):
        report = fleet.wait()
        tokens = fleet.sim.rest_door.tokens  # type: ignore[union-attr]
        issued, refused = tokens.issued, tokens.refused

    # 2 slots of 10 rounds at 0.5 s: 10 s of trading; a token lives 3-4 s (`exp` is rounded up
    # to a second) and is renewed at 80 % of that by whoever keeps sending: the coordinator's
    # batch POSTs need at least two renewals besides the logins of ingress and coordinator.
    assert issued >= 4, issued
    assert report["summary"]["missing"] == 0 and report["summary"]["late"] == 0, report["summary"]
    assert all_on_time(answered_rows(report))
    assert refused <= 2, refused  # a renewal is due before expiry; a 401 at most at the edge


def test_every_websocket_dropped_mid_run_reconnects_and_is_on_time_within_two_ticks(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    with running_fleet(exchange.url, broker.url, **fleet_options(transport="rest")) as (
        fleet,
        _workers,
    ):
        wait_rounds(fleet, 4)
        door = fleet.sim.rest_door
        assert door is not None
        dropped = door.drop_sockets()
        dropped_at = time.time()
        report = fleet.wait()
        ingress, coordinator = fleet.ingress, fleet.coordinator
        reconnects = ingress.tally.reconnects + coordinator.tally.reconnects

    # one socket per aggregator, the ingress's (it records the batch answers too)
    assert dropped == 20, dropped
    assert reconnects >= 20, reconnects
    after = [r for r in answered_rows(report) if r["sent_at"] >= dropped_at]
    assert len(after) >= 8, "the run ended too soon after the drop to judge it"
    bad = [r for r in after[2:] if r["on_time"] + r["idle"] < r["aggregators"]]
    assert bad == [], (brief(after), reconnects)
    missing_at_exchange = sum(r["missing"] for r in after[:2])
    print(
        f"websockets dropped: {dropped}; aggregator-rounds missing at the exchange: {missing_at_exchange}"
    )


def test_500s_on_a_third_of_the_batches_are_retried_and_nothing_is_applied_twice(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    with running_fleet(exchange.url, broker.url, **fleet_options(transport="rest")) as (
        fleet,
        _workers,
    ):
        door = fleet.sim.rest_door
        assert door is not None
        wait_rounds(fleet, 3)
        door.set_faults(RestFaults(error_every=3))
        faulty_from = time.time()
        wait_rounds(fleet, 13)
        door.set_faults(RestFaults())
        faulty_until = time.time()
        report = fleet.wait()
        plan = door.fault_plan
        injected, duplicates = dict(plan.injected), door.duplicate_batches
        lost_answers, answered_on_retry = set(plan.lost_answers), set(plan.answered_on_retry)
        applied_twice = {k: n for k, n in fleet.journal.transaction_ids().items() if n > 1}
        lost = fleet.coordinator.tally.lost_rounds

    assert injected[BatchFault.ERROR_AFTER] >= 10, injected
    assert injected[BatchFault.ERROR_BEFORE] >= 10, injected
    # Every batch whose answer was lost came again under its transaction id, got its answer,
    # and was applied once (the exchange's journal of applied batches has no repeat).
    assert lost_answers and lost_answers <= answered_on_retry, lost_answers - answered_on_retry
    assert duplicates >= len(lost_answers)
    assert applied_twice == {}
    faulty = [r for r in answered_rows(report) if faulty_from <= r["sent_at"] <= faulty_until]
    assert len(faulty) >= 8
    assert all_on_time(faulty), [r for r in faulty if r["on_time"] + r["idle"] < r["aggregators"]]
    assert report["summary"]["missing"] == 0 and lost == 0


def test_a_server_that_never_answers_a_batch_costs_those_rounds_counted_and_the_fleet_goes_on(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, broker = two_redis
    with running_fleet(
        exchange.url,
        broker.url,
        **fleet_options(
            transport="rest",
            rest_link={"request_timeout_s": 0.4, "batch_retry_budget_s": 0.5},
        ),
    ) as (fleet, _workers):
        door = fleet.sim.rest_door
        assert door is not None
        wait_rounds(fleet, 3)
        door.set_faults(RestFaults(hang_s=5.0))
        hung_from = time.time()
        time.sleep(3 * TICK_S)
        door.set_faults(RestFaults())
        hung_until = time.time()
        report = fleet.wait()
        hung = door.fault_plan.injected[BatchFault.HANG]
        lost = fleet.coordinator.tally.lost_rounds

    missing = report["summary"]["missing"]
    print(
        f"hung POSTs: {hung}; batches the client gave up: {lost}; missing at the exchange: {missing}"
    )
    assert hung >= 20, hung
    # Every batch that got no answer was given up within its budget and counted as a lost
    # round: the client's count is the exchange's.
    assert lost == missing, (lost, missing)
    during = [r for r in answered_rows(report) if hung_from <= r["sent_at"] <= hung_until]
    assert sum(r["missing"] for r in during) >= 20
    # The fleet went on: from the second round after the server answers again, all on time.
    after = [r for r in answered_rows(report) if r["sent_at"] > hung_until]
    assert len(after) >= 5
    bad = [r for r in after[1:] if r["on_time"] + r["idle"] < r["aggregators"]]
    assert bad == [], brief(after)


def test_over_rest_the_ingress_records_the_exchanges_rejections_for_the_strategies(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    """The exchange answers on the aggregator's one socket, which the ingress holds: a rejected
    command reaches the asset's strategy state (and the counters) through the ingress."""
    exchange, broker = two_redis
    with running_fleet(exchange.url, broker.url, **fleet_options(transport="rest")) as (
        fleet,
        _workers,
    ):
        door = fleet.sim.rest_door
        assert door is not None
        wait_rounds(fleet, 2)
        agg_name, entry = next(iter(fleet.assignment.items()))
        agg = fleet.ingress.fleet.aggregator_uuid[agg_name]  # type: ignore[union-attr]
        asset = entry["asset_uuids"][0]
        answer = load_example("07_batch_response_bid_energy_above_requirement")["data"]
        rejected = next(iter(answer["responses"].values()))
        door.deliver(
            [
                (
                    agg,
                    orjson.dumps(
                        {**answer, "aggregator_uuid": agg, "responses": {asset: rejected}}
                    ),
                    False,
                )
            ]
        )
        deadline = time.monotonic() + 10
        client = redis.Redis.from_url(broker.url)
        while client.hget("gf:rejections", asset) is None:
            assert time.monotonic() < deadline, "the rejection never reached the strategy state"
            time.sleep(0.05)
        stored = unpackb(client.hget("gf:rejections", asset))
        # The response thread stores the rejection, then counts it: wait for the count too.
        while fleet.ingress.tally.commands_rejected_total < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        counted = fleet.ingress.tally.commands_rejected_total
        fleet.wait()

    assert stored["command"] == "bid" and "Error when handling bid create" in stored["reason"]
    assert counted >= 1


@pytest.mark.parametrize("energy_data", ["batch", "endpoints"])
def test_forecasts_and_measurements_reach_the_exchange_through_the_batch_or_the_endpoints(
    two_redis: tuple[RedisServer, RedisServer], tmp_path: Path, energy_data: str
) -> None:
    """``exchange.rest.energy_data: endpoints`` sends them to each asset's own endpoint
    (rest.md 3.7) instead of the batch: the exchange ends up with the same forecasts and
    measurements either way, and with endpoints no batch carries one."""
    exchange, broker = two_redis
    rows = "".join(f"{h:02d}:{m:02d},1.25,1.5\n" for h in range(24) for m in (0, 15, 30, 45))
    grid = generate_grid(200, houses_size=10, seed=7)  # the harness's grid
    loads_and_pvs = [
        n for n, k in zip(grid.asset_name, grid.kind_list, strict=True) if k in (LOAD, PV)
    ]
    for name in loads_and_pvs[:3]:  # forecast-driven kinds (a storage takes no forecast)
        (tmp_path / f"{name}.csv").write_text("time,energy_kWh,measured_kWh\n" + rows)
    with running_fleet(
        exchange.url,
        broker.url,
        **fleet_options(
            transport="rest",
            assets=200,
            aggregators=2,
            strategy={"name": "forecast", "params": {"profile_dir": str(tmp_path)}},
            rest_link={"energy_data": energy_data},
        ),
    ) as (fleet, _workers):
        fleet.wait()
        state = fleet.sim.state
        forecasts, measurements = dict(state.forecast), dict(state.measurement)
        in_batches = [
            c["type"]
            for _, _, commands in fleet.journal.entries
            for cmds in commands.values()
            for c in cmds
        ]
        link = fleet.coordinator.link
        posted = getattr(link, "sent_energy_posts", 0), getattr(link, "lost_energy_posts", 0)

    profiled = {i for i, _ in forecasts}
    assert len(profiled) == 3, forecasts
    assert set(forecasts.values()) == {1.25} and set(measurements.values()) == {1.5}
    assert len(forecasts) >= 3 * 2 and len(measurements) >= 3 * 2  # every slot of the run
    if energy_data == "endpoints":
        assert not any(t.startswith("set_energy_") for t in in_batches), in_batches
        assert posted[0] >= len(forecasts) + len(measurements) and posted[1] == 0, posted
    else:
        assert in_batches.count("set_energy_forecast") >= len(forecasts)


def test_malformed_frames_and_unknown_events_on_a_socket_are_skipped_and_the_fleet_stays_on_time(
    two_redis: tuple[RedisServer, RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    exchange, broker = two_redis
    with running_fleet(exchange.url, broker.url, **fleet_options(transport="rest")) as (
        fleet,
        _workers,
    ):
        door = fleet.sim.rest_door
        assert door is not None
        wait_rounds(fleet, 3)
        agg = next(iter(fleet.ingress.fleet.aggregator_uuid.values()))  # type: ignore[union-attr]
        junk = [b"{not json", b"[1, 2, 3]", b'{"event": "surprise", "x": 1}', b'{"event": 42}', b""]
        with caplog.at_level(logging.WARNING):
            door.deliver([(agg, frame, False) for frame in junk])
            sent_at = time.time()
            report = fleet.wait()
        bad = fleet.ingress.link.bad_frames  # type: ignore[attr-defined]

    assert bad >= 3, bad
    assert "skipping unknown event kind 'surprise'" in caplog.text
    after = [r for r in answered_rows(report) if r["sent_at"] > sent_at]
    assert len(after) >= 5
    assert all_on_time(after), brief(after)
