"""Deadline accounting: on time, late, missing, multi-batch and the report's figures."""

from __future__ import annotations

from typing import Any

from gridfleet.simulator.deadline import (
    LATE,
    MISSING,
    ON_TIME,
    OPEN,
    DeadlineTracker,
    percentiles,
)


def test_classification() -> None:
    d = DeadlineTracker()
    d.round_sent("s", 0, 10.0, ["a", "b", "c"])
    d.batch_arrived("a", 10.1)  # on time
    d.batch_arrived("a", 10.2)  # a second batch of the same round: last arrival
    d.batch_arrived("b", 10.9)
    d.round_sent("s", 10, 11.0, ["a", "b", "c"])
    d.batch_arrived("c", 11.3)  # c answers round 0 after round 1 went out: late for round 0
    d.batch_arrived("a", 11.1)
    d.round_sent("s", 20, 12.0, ["a", "b", "c"])
    d.batch_arrived("c", 12.05)  # c's answer to round 1: late too (round 2 was sent)
    d.finish(13.0)
    recs = {agg: [r.status for r in rs] for agg, rs in d.per_agg.items()}
    assert recs == {
        "a": [ON_TIME, ON_TIME, MISSING],
        "b": [ON_TIME, MISSING, MISSING],
        "c": [LATE, LATE, MISSING],
    }
    a0 = d.per_agg["a"][0]
    assert (a0.batches, a0.first, a0.last) == (2, 10.1, 10.2)
    rep = d.report({"x": 1}, names={"a": "agg-a"})
    s = rep["summary"]
    assert (s["on_time"], s["late"], s["missing"], s["aggregator_rounds"]) == (3, 2, 4, 9)
    assert rep["aggregators"]["a"]["name"] == "agg-a"
    assert [r["on_time"] for r in rep["ticks"]] == [2, 1, 0]
    assert rep["ticks"][0]["interval_ms"] == 1000.0
    assert s["first_batch_ms"]["max"] == 1300.0


def test_open_round_and_unattributed() -> None:
    d = DeadlineTracker()
    assert d.batch_arrived("nobody", 1.0) is None and d.unattributed == 1
    d.round_sent("s", 0, 5.0, ["a"])
    assert d.per_agg["a"][0].status == OPEN
    assert d.batch_arrived("a", 4.0) is None  # before any round was sent to it


def test_percentiles_nearest_rank() -> None:
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None}
    p = percentiles([float(i) for i in range(1, 101)])
    assert (p["p50"], p["p95"], p["p99"], p["max"]) == (50.0, 95.0, 99.0, 100.0)


def test_exchange_measures_a_prompt_and_a_slow_aggregator(make_sim, raw_grid, client) -> None:  # type: ignore[no-untyped-def]
    """Real time, 0.1 s ticks: one aggregator answers at once, the other 0.2 s later (late: two
    ticks have gone out by then, so a busy machine delaying one tick cannot make it on time).
    Batches name their round in the transaction id, as gridfleet's coordinator does."""
    import time

    from gridfleet.exchange import channels

    sim = make_sim(raw_grid, tick_interval=0.1, slots=2, paused=True)
    fast, slow = client.create("fast"), client.create("slow")
    dev = {n: client.register(n) for n in ("H1 Load0", "H2 Load3")}
    client.select(fast, dev["H1 Load0"])
    client.select(slow, dev["H2 Load3"])
    client.send("/resume", {"transaction_id": "go"})
    pending: list[tuple[float, str, str, str]] = []
    end = time.monotonic() + 5
    while not sim.finished.is_set() and time.monotonic() < end:
        client.pump(0.005)
        for ch, data in client.take(
            lambda c, d: (
                c.endswith("/events/all") and isinstance(d, dict) and d.get("event") == "tick"
            )
        ):
            if data["grid_tree"]:
                agg = channels.aggregator_of(ch)
                assert agg is not None
                delay = 0.0 if agg == fast else 0.2
                pending.append(
                    (
                        time.monotonic() + delay,
                        agg,
                        dev["H1 Load0"] if agg == fast else dev["H2 Load3"],
                        f"{data['market_slot']}/{data['slot_completion']}/t",
                    )
                )
        now = time.monotonic()
        for item in [p for p in pending if p[0] <= now]:
            pending.remove(item)
            client.send(
                channels.batch_commands(),
                {
                    "type": "BATCHED",
                    "transaction_id": item[3],
                    "aggregator_uuid": item[1],
                    "batch_commands": {item[2]: [{"type": "device_info"}]},
                },
            )
        client.inbox.clear()
    assert sim.wait(2)
    rep = sim.report()
    by_name = {v["name"]: v for v in rep["aggregators"].values()}
    assert by_name["fast"]["on_time"] == 10 and by_name["fast"]["late"] == 0
    assert by_name["slow"]["late"] >= 8 and by_name["slow"]["on_time"] == 0, by_name
    assert rep["summary"]["first_batch_ms"]["p50"] is not None and len(rep["ticks"]) == 10


def test_a_tagged_batch_is_attributed_to_the_round_it_names() -> None:
    from gridfleet.simulator.deadline import DeadlineTracker

    t = DeadlineTracker()
    t.round_sent("2024-06-01T00:15", 10, 1.0, ["a"])
    t.round_sent("2024-06-01T00:15", 20, 2.0, ["a"])  # round 0 got no batch: lost
    t.round_sent("2024-06-01T00:15", 30, 3.0, ["a"])
    # The answer to 20 % arrives before 30 % went out: on time, and 10 % stays missing.
    t.batch_arrived("a", 2.1, "2024-06-01T00:15/20%/x")
    t.batch_arrived("a", 3.1, "2024-06-01T00:15/30%/y")
    t.finish(4.0)
    s = t.report()["summary"]
    assert (s["on_time"], s["late"], s["missing"]) == (2, 0, 1)


def test_a_tag_cannot_name_a_round_not_yet_sent() -> None:
    from gridfleet.simulator.deadline import DeadlineTracker

    t = DeadlineTracker()
    t.round_sent("2024-06-01T00:15", 10, 1.0, ["a"])
    t.round_sent("2024-06-01T00:15", 20, 2.0, ["a"])
    # Claims 20 % but arrived before it was sent: falls back to timing (answers 10 %, late? no: on time).
    rec = t.batch_arrived("a", 1.5, "2024-06-01T00:15/20%/z")
    assert rec is not None and rec.round == 0


def test_untagged_batches_keep_the_timing_rule() -> None:
    from gridfleet.simulator.deadline import DeadlineTracker

    t = DeadlineTracker()
    t.round_sent("s", 10, 1.0, ["a"])
    t.round_sent("s", 20, 2.0, ["a"])
    rec = t.batch_arrived("a", 2.5, "0b5c4f1e-uuid-like")
    assert rec is not None and rec.round == 0  # the oldest unanswered of the last two: late


def test_a_batch_backlog_never_delays_a_round_and_keeps_its_read_time(redis_url: str) -> None:
    """Applying batches costs 20 ms each here and 40 arrive at once (0.8 s of work) while ticks
    go out every 0.1 s: rounds keep their cadence (the backlog is applied between them), and
    the deadline report uses the time the inbox read each batch, even for batches the engine
    had not applied yet when the run finished."""
    import itertools
    import time

    import orjson

    from gridfleet.exchange import channels
    from gridfleet.simulator import SimConfig, Simulator
    from gridfleet.simulator.door import BATCH, Inbound
    from gridfleet.simulator.grid import grid_from_dict
    from tests.simulator.conftest import raw_grid_dict

    grid = grid_from_dict(raw_grid_dict(), seed=2)
    sim = Simulator(grid, redis_url=redis_url, config=SimConfig(slots=2, tick_interval=0.1))
    load = grid.asset_uuid[0]
    agg = sim.preselect({"agg": {"asset_uuids": [load]}})["agg"]
    sim.batch_chunk = 2
    dispatched: list[float] = []
    real_dispatch, real_respond = sim.engine.dispatch, sim.handler.respond_many

    def dispatch() -> None:
        dispatched.append(time.monotonic())
        real_dispatch()

    def slow_respond(items: Any, pieces: bool = False) -> Any:
        time.sleep(0.02 * len(items))
        return real_respond(items, pieces)

    sim.engine.dispatch = dispatch  # type: ignore[method-assign]
    sim.handler.respond_many = slow_respond  # type: ignore[method-assign]
    sim.start()
    try:
        end = time.monotonic() + 5
        while not sim.deadline.rounds and time.monotonic() < end:
            time.sleep(0.005)  # the first round of slot 1 (the first one that counts)
        first = sim.deadline.rounds[0]
        at = [time.time() + i * 1e-6 for i in range(40)]
        t_backlog = time.monotonic()
        for i, t in enumerate(at):
            msg = {
                "type": "BATCHED",
                "transaction_id": f"{first.market_slot}/{first.completion}%/{i}",
                "aggregator_uuid": agg,
                "batch_commands": {load: [{"type": "device_info"}]},
            }
            sim.inbound.put(Inbound(BATCH, channels.batch_commands(), orjson.dumps(msg), t))
        assert sim.wait(5)
        assert sim.error is None
    finally:
        sim.stop()
    during = [d for d in dispatched if d > t_backlog]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(during) >= 8 and max(gaps) < 0.3, gaps  # not one 0.8 s gap
    # what the engine had not applied by the finish is still counted as arrived, unanswered
    assert sim.counts.batches_received == 40 and sim.counts.batches_answered >= 20
    rec = sim.deadline.per_agg[agg][0]
    assert (rec.first, rec.last, rec.batches) == (at[0], at[-1], 40)


def test_an_untagged_batch_after_an_idle_round_answers_the_round_that_expects_it() -> None:
    """The official client (and any other) sends plain uuids: after a round with nothing to
    trade, which rightly got no batch, the next batch answers the next round, on time. It used
    to be charged to the idle round as late, so such clients measured ~50 % on time."""
    from gridfleet.simulator.deadline import IDLE, DeadlineTracker

    t = DeadlineTracker()
    t.round_sent("s", 10, 1.0, ["a"], idle={"a"})
    t.round_sent("s", 20, 2.0, ["a"])
    rec = t.batch_arrived("a", 2.1, "0b5c4f1e-uuid-like")
    assert rec is not None and rec.round == 1
    t.round_sent("s", 30, 3.0, ["a"])
    t.finish(4.0)
    assert [r.status for r in t.per_agg["a"]] == [IDLE, ON_TIME, MISSING]


def test_idle_rounds_are_neither_missing_nor_in_the_ratio() -> None:
    """An aggregator with nothing to trade sends no batch (gsy-e never answers an empty one):
    its round is idle. One with something to trade and no batch stays missing; an idle round
    that gets a batch anyway counts as answered."""
    from gridfleet.simulator.deadline import IDLE, DeadlineTracker

    t = DeadlineTracker()
    t.round_sent("s", 10, 1.0, ["busy", "done"], idle={"done"})
    t.batch_arrived("busy", 1.1, "s/10%/x")
    t.round_sent("s", 20, 2.0, ["busy", "done"], idle={"busy", "done"})
    t.batch_arrived("done", 2.1, "s/20%/y")  # idle, but it said something: on time
    t.round_sent("s", 30, 3.0, ["busy", "done"], idle={"done"})  # busy says nothing: missing
    t.finish(4.0)
    assert [r.status for r in t.per_agg["done"]] == [IDLE, ON_TIME, IDLE]
    assert [r.status for r in t.per_agg["busy"]] == [ON_TIME, IDLE, MISSING]
    rep = t.report()
    s = rep["summary"]
    assert (s["on_time"], s["late"], s["missing"], s["idle"]) == (2, 0, 1, 3)
    assert s["aggregator_rounds"] == 6 and s["on_time_ratio"] == round(2 / 3, 6)
    assert [(r["on_time"], r["missing"], r["idle"]) for r in rep["ticks"]] == [
        (1, 0, 1),
        (1, 0, 1),
        (0, 1, 1),
    ]
    assert (rep["aggregators"]["done"]["idle"], rep["aggregators"]["busy"]["missing"]) == (2, 1)


def test_undelivered_rounds_are_missing_for_everyone_and_form_a_gap() -> None:
    from gridfleet.simulator.deadline import DeadlineTracker

    t = DeadlineTracker()
    t.round_sent("s", 10, 1.0, ["a", "b"])
    t.batch_arrived("a", 1.1)
    t.batch_arrived("b", 1.1)
    assert t.delivery_failed(1.9) is True
    assert t.delivery_failed(1.95) is False  # the same gap
    n = t.round_sent("s", 20, 2.0, ["a", "b"], idle={"b"})  # b idle, but it never saw it
    t.round_undelivered("s 20%", n)
    t.round_undelivered("s 0%")  # a first-slot round: in the gap, not a deadline round
    gap = t.delivery_restored(2.5)
    assert gap is not None and (gap.rounds, gap.first_round, gap.last_round) == (2, "s 20%", "s 0%")
    t.round_sent("s", 30, 3.0, ["a", "b"])
    t.finish(4.0)
    rep = t.report()
    s = rep["summary"]
    assert s["undelivered_rounds"] == 2 and s["missing"] == 4, s  # 2 undelivered + 2 unanswered
    assert s["gaps"] == [
        {
            "start": 1.9,
            "end": 2.5,
            "seconds": 0.6,
            "rounds": 2,
            "first_round": "s 20%",
            "last_round": "s 0%",
        }
    ]
    assert [r["delivered"] for r in rep["ticks"]] == [True, False, True]
    assert rep["ticks"][1]["missing"] == 2 and rep["ticks"][1]["idle"] == 0


def test_the_exchange_tells_idle_from_missing(redis_url: str) -> None:
    """The engine marks a round idle for an aggregator whose assets have nothing to trade
    (a load with no requirement) and no market; one with a requirement and no batch is missing."""
    from gridfleet.simulator.grid import grid_from_dict
    from gridfleet.simulator.runner import SimConfig, Simulator

    grid = grid_from_dict(
        {
            "market_maker_rate": 30,
            "grid": {
                "name": "Grid",
                "children": [
                    {"name": "Busy Load", "type": "load", "energy_kWh": 0.1},
                    {"name": "Idle Load", "type": "load", "energy_kWh": 0.0},
                    {"name": "Busy PV", "type": "pv", "energy_kWh": 0.1},
                ],
            },
        }
    )
    uuid_of = dict(zip(grid.asset_name, grid.asset_uuid, strict=True))
    market_uuid = grid.markets[0].uuid
    sim = Simulator(grid, redis_url=redis_url, config=SimConfig(slots=2))
    names = sim.preselect(
        {
            "busy": {"asset_uuids": [uuid_of["Busy Load"]]},
            "idle": {"asset_uuids": [uuid_of["Idle Load"]]},
            "operator": {"market_uuids": [market_uuid]},  # a market to operate: never idle
        }
    )
    sim.start(engine=False)
    try:
        for _ in range(1 + 10):  # the first slot's 10 rounds (not counted), then slot 2's first
            sim.step()
        sim.engine.finish()
    finally:
        sim.stop()
    by_name = {a["name"]: a for a in sim.report()["aggregators"].values()}
    assert (by_name["idle"]["idle"], by_name["idle"]["missing"]) == (1, 0)
    assert (by_name["busy"]["idle"], by_name["busy"]["missing"]) == (0, 1)
    assert (by_name["operator"]["idle"], by_name["operator"]["missing"]) == (0, 1)
    assert set(names) == {"busy", "idle", "operator"}
