"""Report inputs in their exact wire shapes, with figures small enough to check by hand.

The exchange's report is produced by the real :class:`DeadlineTracker` (not typed in), so its
shape is the simulator's. Two aggregators over four rounds, 500 ms apart:

    round  slot   tick   A (prompt)   B
    0      00:15  0 %    100 ms       300 ms
    1      00:15  10 %   120 ms       700 ms -> late (arrives after round 2 went out)
    2      00:15  20 %   200 ms       none   -> missing
    3      00:30  0 %     50 ms       none   -> missing (run finished)
"""

from __future__ import annotations

from typing import Any

from gridfleet.simulator.deadline import DeadlineTracker

A = "aaaaaaaa-0000-4000-8000-000000000001"
B = "bbbbbbbb-0000-4000-8000-000000000002"
T0 = 1_700_000_000.0
S1, S2 = "2024-06-01T00:15", "2024-06-01T00:30"


def sim_report() -> dict[str, Any]:
    d = DeadlineTracker()
    rounds = [(S1, 0), (S1, 10), (S1, 20), (S2, 0)]
    for i, (slot, completion) in enumerate(rounds):
        sent = T0 + 0.5 * i
        d.round_sent(slot, completion, sent, [A, B])
        # arrivals relative to each round, in time order as the exchange would see them
        if i == 0:
            d.batch_arrived(A, sent + 0.100)
            d.batch_arrived(B, sent + 0.300)
        elif i == 1:
            d.batch_arrived(A, sent + 0.120)
        elif i == 2:
            d.batch_arrived(A, sent + 0.200)
            d.batch_arrived(B, sent + 0.200)  # B's answer to round 1, 700 ms after it
        else:
            d.batch_arrived(A, sent + 0.050)
    d.finish(T0 + 2.0)
    meta = {
        "grid": "2 markets, 40 assets",
        "counts": {
            "rounds": 14,
            "events_sent": 40,
            "batches_received": 6,
            "batches_answered": 6,
            "commands": 118,
            "trades": 7,
            "energy_traded_kwh": 3.5,
            "bytes_sent": 12345,
        },
        "first_slot_excluded": True,
    }
    return d.report(meta, names={A: "agg-a", B: "agg-b"})


def _round(slot: str, tick: int, latency: float, commands: int, hedged: int = 0) -> dict[str, Any]:
    return {
        "kind": "round",
        "round": f"{slot}#{tick}",
        "slot": slot,
        "tick": tick,
        "aggregators": 2,
        "shards": 2,
        "hedged": hedged,
        "commands": commands,
        "refused": 0,
        "strategy_errors": 0,
        "latency_ms": latency,
        "budget_ms": 450.0,
        "on_time": True,
        "shard_ms_max": 5.0,
    }


def _trade(agg: str, n: int, kwh: float, price: float, fees: float) -> dict[str, Any]:
    return {
        "kind": "trade",
        "aggregator": agg,
        "trades": n,
        "energy_kwh": kwh,
        "price_ct": price,
        "fees_ct": fees,
    }


def records() -> list[dict[str, Any]]:
    return [
        _round(S1, 0, 90.0, 40, hedged=1),
        _round(S1, 1, 110.0, 30),
        _trade(A, 2, 1.0, 30.0, 2.0),  # matched after tick 1 of 00:15
        _trade(B, 1, 0.5, 15.0, 1.0),
        _round(S1, 2, 190.0, 30),
        _round(S2, 0, 45.0, 20),
        _trade(A, 3, 2.0, 50.0, 0.0),  # matched after the first tick of 00:30
        {"kind": "finish", "aggregator": A},
        {"kind": "finish", "aggregator": B},
    ]


def counters() -> dict[str, Any]:
    # as read from Redis: strings
    return {
        "rounds": "4",
        "batches": "8",
        "commands_sent": "120",
        "commands_refused": "2",
        "commands_rejected": "1",
        "hedged_shards": "3",
        "strategy_errors": "0",
        "deadline_hit": "4",
        "deadline_miss": "0",
        "trades": "6",
        "energy_traded_kwh": "3.5000000001",
        "skipped_empty": "20",
        "late_events": "1",
        "bad_events": "0",
        "lost_rounds": "0",
    }


def meta() -> dict[str, Any]:
    return {
        "assets": 40,
        "aggregators": 2,
        "markets": 2,
        "slots": 3,
        "tick_interval_s": 0.5,
        "tree": "full",
        "workers": 2,
        "started_at": "2024-06-01T12:00:00+00:00",
        "duration_s": 17.5,
        "command": "gridfleet demo --assets 40 --aggregators 2",
    }


def market_stats() -> list[dict[str, Any]]:
    def row(slot: str, market: str, kwh: float, rate: float | None, fee: float) -> dict[str, Any]:
        return {
            "slot": slot,
            "market": market,
            "traded_kwh": kwh,
            "avg_rate": rate,
            "fee_revenue_ct": fee,
            "import_kwh": kwh / 2,
            "export_kwh": 0.0,
        }

    return [
        row(S1, "Grid", 1.0, 30.0, 3.0),
        row(S1, "House 1", 1.5, 28.0, 0.5),
        row(S2, "Grid", 0.0, None, 0.0),
        row(S2, "House 1", 2.0, 25.0, 1.5),
    ]


def slot_totals() -> list[dict[str, Any]]:
    return [
        {"slot": S1, "trades": 4, "energy_kwh": 2.5},
        {"slot": S2, "trades": 3, "energy_kwh": 1.0},
    ]


def inputs(**extra: Any) -> dict[str, Any]:
    """All keyword arguments of ``write_report``/``build_report`` but ``out_dir``."""
    return {
        "sim_report": sim_report(),
        "records": records(),
        "counters": counters(),
        "meta": meta(),
        "market_stats": market_stats(),
        "slot_totals": slot_totals(),
        **extra,
    }
