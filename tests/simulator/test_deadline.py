"""Deadline accounting: on time, late, missing, multi-batch and the report's figures."""

from __future__ import annotations

from gridfleet.platform.simulator.deadline import (
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
