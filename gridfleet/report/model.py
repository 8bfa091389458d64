"""The run report as data: pure functions from the run's inputs to the ``report.json`` dict.

Two views of one run meet here and are kept apart on purpose:

- the exchange's (``sim_report``, ``slot_totals``, ``market_stats``): when each batch arrived
  relative to its tick, what was traded. These are the figures that count.
- the fleet's (``records``, ``counters``): what the coordinator believes it did, and what the
  aggregators received. Each side of a trade reaches its own aggregator, so fleet-side trade
  counts exceed the exchange's when both sides belong to the fleet.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from gridfleet.runtime.redact import redact

PCTS = ("p50", "p95", "p99", "max")
COUNTER_KEYS = (
    "rounds",
    "batches",
    "commands_sent",
    "commands_refused",
    "commands_rejected",
    "hedged_shards",
    "strategy_errors",
    "deadline_hit",
    "deadline_miss",
    "trades",
    "energy_traded_kwh",
    "settlement_trades",
    "settlement_energy_kwh",
    "skipped_empty",
    "late_events",
    "bad_events",
    "unusable_trees",
    "lost_rounds",
)
GAP_COUNTER_KEYS = ("gaps", "exchange_gap_rounds", "broker_gap_rounds", "fenced_rounds")
"""Counters written only when an outage ended or a takeover fenced a round (0 when absent)."""


def num(value: Any, default: float = 0.0) -> float:
    """A counter value (Redis hands back strings) as a float; ``default`` when unusable."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def counter_int(counters: Mapping[str, Any], key: str) -> int:
    return round(num(counters.get(key)))


def tick_index(completion: Any) -> int:
    """``"30%"`` -> 3: the exchange labels ticks by completion, the fleet by index."""
    try:
        return int(str(completion).rstrip("%")) // 10
    except ValueError:
        return -1


def ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


def percentiles(d: Mapping[str, Any] | None) -> dict[str, float | None]:
    d = d or {}
    return {k: (None if d.get(k) is None else float(d[k])) for k in PCTS}


def attribute_trades(records: Iterable[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """Pair each trade record with its market slot.

    Trade records carry no slot. The exchange sends a tick's trades just before the next tick
    event, so in stream order they follow the round record of the tick they were matched after;
    that round's slot is theirs (a slot's last trades come before the next slot's first round).
    An explicit ``slot`` on a record wins. Trades before any round go to ``""``.
    """
    slot = ""
    out: list[tuple[str, Mapping[str, Any]]] = []
    for r in records:
        kind = r.get("kind")
        if kind == "round":
            slot = str(r.get("slot", slot))
        elif kind == "trade":
            out.append((str(r.get("slot", slot)), r))
    return out


def per_tick(
    sim_report: Mapping[str, Any], records: list[Mapping[str, Any]], deadline_ms: float | None
) -> list[dict[str, Any]]:
    """One row per evaluated round: the exchange's measurement joined with the coordinator's."""
    # A round can have follow-ups (``…#9.1``) for events that reached ingress after it was
    # handed out: the first record gives the round's timing, commands add up over all of them.
    client: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        if r.get("kind") != "round":
            continue
        key = (str(r.get("slot")), int(num(r.get("tick"), -1)))
        c = client.get(key)
        if c is None:
            client[key] = dict(r)
        else:
            for k in ("commands", "refused", "hedged"):
                c[k] = int(num(c.get(k))) + int(num(r.get(k)))
    rows = []
    for t in sim_report.get("ticks", []):
        slot, tick = str(t.get("market_slot", "")), tick_index(t.get("slot_completion"))
        on, late, miss = int(t.get("on_time", 0)), int(t.get("late", 0)), int(t.get("missing", 0))
        cr: Mapping[str, Any] = client.get((slot, tick), {})
        idle = int(t.get("idle", 0))
        interval = t.get("interval_ms")
        rows.append(
            {
                "round": t.get("round"),
                "slot": slot,
                "tick": tick,
                "aggregators": int(t.get("aggregators", 0)),
                "on_time": on,
                "late": late,
                "missing": miss,
                "idle": idle,  # nothing to trade, no batch: not expected to answer
                "delivered": bool(t.get("delivered", True)),  # False: the exchange's Redis was down
                "on_time_ratio": ratio(on, on + late + miss),
                # the deadline of a round is the next round; the last one ends with the run
                "deadline_ms": float(interval) if interval is not None else deadline_ms,
                "latency_ms": percentiles(t.get("first_batch_ms")),
                "client_latency_ms": cr.get("latency_ms"),
                "client_budget_ms": cr.get("budget_ms"),
                "client_on_time": cr.get("on_time"),
                "commands": cr.get("commands"),
                "refused": cr.get("refused"),
                "hedged": cr.get("hedged"),
            }
        )
    return rows


def per_slot(
    ticks: list[dict[str, Any]],
    records: list[Mapping[str, Any]],
    market_stats: list[Mapping[str, Any]],
    slot_totals: list[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One row per market slot: deadline outcomes, commands, trades and fees."""
    rows: dict[str, dict[str, Any]] = {}

    def row(slot: str) -> dict[str, Any]:
        return rows.setdefault(
            slot,
            {
                "slot": slot,
                "rounds": 0,
                "on_time": 0,
                "late": 0,
                "missing": 0,
                "latency_max_ms": None,
                "commands": 0,
                "hedged": 0,
                "fleet_trades": 0,
                "fleet_energy_kwh": 0.0,
                "settlement_trades": 0,
                "settlement_energy_kwh": 0.0,
                "_price_ct": 0.0,
                "fleet_fees_ct": 0.0,
                "trades": None,
                "energy_kwh": None,
                "fee_revenue_ct": None,
            },
        )

    for t in ticks:
        r = row(t["slot"])
        r["rounds"] += 1
        for k in ("on_time", "late", "missing"):
            r[k] += t[k]
        mx = t["latency_ms"]["max"]
        if mx is not None:
            r["latency_max_ms"] = max(mx, r["latency_max_ms"] or 0.0)
    for rec in records:
        if rec.get("kind") == "round":
            r = row(str(rec.get("slot", "")))
            r["commands"] += int(num(rec.get("commands")))
            r["hedged"] += int(num(rec.get("hedged")))
    for slot, rec in attribute_trades(records):
        r = row(slot)
        r["fleet_trades"] += int(num(rec.get("trades")))
        r["fleet_energy_kwh"] += num(rec.get("energy_kwh"))
        r["_price_ct"] += num(rec.get("price_ct"))
        r["fleet_fees_ct"] += num(rec.get("fees_ct"))
        r["settlement_trades"] += int(num(rec.get("settlement_trades")))
        r["settlement_energy_kwh"] += num(rec.get("settlement_energy_kwh"))
    for m in market_stats:
        r = row(str(m.get("slot", "")))
        r["fee_revenue_ct"] = (r["fee_revenue_ct"] or 0.0) + num(m.get("fee_revenue_ct"))
    for s in slot_totals:
        r = row(str(s.get("slot", "")))
        r["trades"] = int(num(s.get("trades")))
        r["energy_kwh"] = round(num(s.get("energy_kwh")), 6)
    out = []
    for slot in sorted(rows):
        r = rows[slot]
        price = r.pop("_price_ct")
        # trade_price is the total paid (ct), so price / energy is the energy-weighted rate
        r["avg_rate_ct_kwh"] = (
            round(price / r["fleet_energy_kwh"], 6) if r["fleet_energy_kwh"] > 0 else None
        )
        r["on_time_ratio"] = ratio(r["on_time"], r["on_time"] + r["late"] + r["missing"])
        for k in ("fleet_energy_kwh", "fleet_fees_ct", "settlement_energy_kwh"):
            r[k] = round(r[k], 6)
        if r["fee_revenue_ct"] is not None:
            r["fee_revenue_ct"] = round(r["fee_revenue_ct"], 6)
        out.append(r)
    # trades with no round before them (slot "") would only add an empty row
    return [r for r in out if r["slot"] or r["fleet_trades"] or r["settlement_trades"]]


def per_market(market_stats: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Totals per market over all slots, highest fee revenue first.

    ``traded_kwh`` counts energy cleared in *or passing through* the market (gsy-e's DSO
    statistics), so it is not additive across markets.
    """
    acc: dict[str, dict[str, Any]] = {}
    for m in market_stats:
        name = str(m.get("market", ""))
        a = acc.setdefault(
            name,
            {
                "market": name,
                "slots": 0,
                "traded_kwh": 0.0,
                "fee_revenue_ct": 0.0,
                "import_kwh": 0.0,
                "export_kwh": 0.0,
                "_rate_kwh": 0.0,
            },
        )
        a["slots"] += 1
        traded = num(m.get("traded_kwh"))
        for k in ("traded_kwh", "fee_revenue_ct", "import_kwh", "export_kwh"):
            a[k] += num(m.get(k))
        rate = m.get("avg_rate")
        if rate is not None and traded > 0:
            a["_rate_kwh"] += num(rate) * traded
    out = []
    for a in acc.values():
        rate_kwh = a.pop("_rate_kwh")
        a["avg_rate"] = round(rate_kwh / a["traded_kwh"], 6) if a["traded_kwh"] > 0 else None
        for k in ("traded_kwh", "fee_revenue_ct", "import_kwh", "export_kwh"):
            a[k] = round(a[k], 6)
        out.append(a)
    out.sort(key=lambda a: (-a["fee_revenue_ct"], -a["traded_kwh"], a["market"]))
    return out


def gaps(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The outages the fleet saw end (exchange silent, broker unreachable), in order."""
    return [
        {
            "cause": str(r.get("cause", "")),
            "rounds": int(num(r.get("rounds"))),
            "seconds": round(num(r.get("seconds")), 3),
            "first": str(r.get("first", "")),
            "last": str(r.get("last", "")),
        }
        for r in records
        if r.get("kind") == "gap"
    ]


def per_aggregator(
    sim_report: Mapping[str, Any], records: list[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Deadline outcome (exchange) and trades received (fleet) per aggregator, worst first."""
    fields = ("trades", "energy_kwh", "fees_ct", "settlement_trades", "settlement_energy_kwh")
    trades: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(fields, 0.0))
    finished: set[str] = set()
    out: list[dict[str, Any]] = []
    for r in records:
        agg = str(r.get("aggregator", ""))
        if r.get("kind") == "trade":
            t = trades[agg]
            for k in fields:
                t[k] += num(r.get(k))
        elif r.get("kind") == "finish":
            finished.add(agg)
    aggs: Mapping[str, Mapping[str, Any]] = sim_report.get("aggregators", {})
    for uuid in sorted(set(aggs) | set(trades)):
        a = aggs.get(uuid, {})
        on, late, miss = int(a.get("on_time", 0)), int(a.get("late", 0)), int(a.get("missing", 0))
        idle = int(a.get("idle", 0))
        t = trades.get(uuid) or dict.fromkeys(fields, 0.0)
        out.append(
            {
                "uuid": uuid,
                "name": str(a.get("name", "")),
                "on_time": on,
                "late": late,
                "missing": miss,
                "idle": idle,
                "on_time_ratio": ratio(on, on + late + miss),
                "trades": int(t["trades"]),
                "energy_kwh": round(t["energy_kwh"], 6),
                "fees_ct": round(t["fees_ct"], 6),
                "settlement_trades": int(t["settlement_trades"]),
                "settlement_energy_kwh": round(t["settlement_energy_kwh"], 6),
                "finished": uuid in finished,
            }
        )
    # worst first: most missing, then most late, then lowest on-time share
    out.sort(key=lambda a: (-a["missing"], -a["late"], a["on_time_ratio"] or 0.0, a["name"]))
    return out


def build_report(
    *,
    sim_report: Mapping[str, Any],
    records: list[Mapping[str, Any]],
    counters: Mapping[str, Any],
    meta: Mapping[str, Any],
    market_stats: list[Mapping[str, Any]] | None = None,
    slot_totals: list[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``report.json`` content. Headline figures are the exchange's; see module docstring."""
    summary: Mapping[str, Any] = sim_report.get("summary", {})
    counts: Mapping[str, Any] = sim_report.get("meta", {}).get("counts", {})
    tick_s = meta.get("tick_interval_s")
    deadline_ms = None if tick_s is None else round(num(tick_s) * 1000, 3)
    ticks = per_tick(sim_report, records, deadline_ms)
    market_stats = market_stats or []
    rounds = [r for r in records if r.get("kind") == "round"]
    client_latency = sorted(num(r.get("latency_ms")) for r in rounds)
    return {
        "assets": meta.get("assets"),
        "aggregators": meta.get("aggregators"),
        "markets": meta.get("markets"),
        "slots": meta.get("slots"),
        "ticks": int(summary.get("rounds", len(ticks))),
        "deadline_ms": deadline_ms,
        "batches_expected": int(summary.get("aggregator_rounds", 0)),
        "batches_on_time": int(summary.get("on_time", 0)),
        "batches_late": int(summary.get("late", 0)),
        "batches_missing": int(summary.get("missing", 0)),
        # rounds with nothing to trade and no batch (in batches_expected, not in the ratio)
        "batches_idle": int(summary.get("idle", 0)),
        # rounds the exchange could not deliver (its Redis down), missing for every aggregator
        "undelivered_rounds": int(summary.get("undelivered_rounds", 0)),
        "delivery_gaps": list(summary.get("gaps", [])),
        "on_time_ratio": summary.get("on_time_ratio"),
        "latency_ms": percentiles(summary.get("first_batch_ms")),
        "last_batch_ms": percentiles(summary.get("last_batch_ms")),
        "unattributed_batches": int(summary.get("unattributed_batches", 0)),
        "commands_sent": counter_int(counters, "commands_sent"),
        "commands_refused": counter_int(counters, "commands_refused"),
        "commands_rejected": counter_int(counters, "commands_rejected"),
        "hedged_shards": counter_int(counters, "hedged_shards"),
        "strategy_errors": counter_int(counters, "strategy_errors"),
        "trades": int(num(counts.get("trades"))),
        "energy_traded_kwh": round(num(counts.get("energy_traded_kwh")), 6),
        "fee_revenue_ct": round(sum(num(m.get("fee_revenue_ct")) for m in market_stats), 6)
        if market_stats
        else None,
        "settlement": settlement_summary(counts, records),
        "exchange": {k: counts[k] for k in sorted(counts)},
        "client": {
            "counters": {
                k: counter_int(counters, k)
                for k in (*COUNTER_KEYS, *GAP_COUNTER_KEYS)
                if not k.endswith("_kwh")
            }
            | {
                k: round(num(counters.get(k)), 6)
                for k in ("energy_traded_kwh", "settlement_energy_kwh")
            },
            "rounds": len(rounds),
            "rounds_on_time": sum(1 for r in rounds if r.get("on_time") is True),
            "latency_ms": _nearest_rank(client_latency),
            "gaps": gaps(records),
        },
        # a command line or URL in meta may carry a password: never into a report file
        "meta": {k: redact(v) if isinstance(v, str) else v for k, v in meta.items()},
        "per_tick": ticks,
        "per_slot": per_slot(ticks, records, market_stats, slot_totals or []),
        "per_market": per_market(market_stats),
        "per_aggregator": per_aggregator(sim_report, records),
    }


def settlement_summary(
    counts: Mapping[str, Any], records: list[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """Settlement-market trades, apart from spot: the exchange's count and energy, the fleet's
    (each side counted) with what it paid and earned; None for a run without settlement."""
    fleet = [r for r in records if r.get("kind") == "trade" and r.get("settlement_trades")]
    if not counts.get("settlement_markets") and not fleet:
        return None
    return {
        "trades": int(num(counts.get("settlement_trades"))),
        "energy_kwh": round(num(counts.get("settlement_energy_kwh")), 6),
        # the deviations the exchange measured, and what was left of them unsettled
        "deviation_kwh": round(num(counts.get("settlement_deviation_kwh")), 6),
        "unsettled_kwh": round(num(counts.get("settlement_unsettled_kwh")), 6),
        "fleet_trades": sum(int(num(r.get("settlement_trades"))) for r in fleet),
        "fleet_energy_kwh": round(sum(num(r.get("settlement_energy_kwh")) for r in fleet), 6),
        "fleet_price_ct": round(sum(num(r.get("settlement_price_ct")) for r in fleet), 6),
    }


def _nearest_rank(v: list[float]) -> dict[str, float | None]:
    """Same percentile definition as the exchange's (nearest rank) so the two compare."""
    if not v:
        return {k: None for k in PCTS}

    def rank(p: float) -> float:
        return round(v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))], 3)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": round(v[-1], 3)}
