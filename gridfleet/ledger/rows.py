"""The fleet's event records (the run's broker stream) as ledger rows: pure, no I/O.

A record that does not have the shape its kind needs is skipped with a reason, never guessed
at: the caller logs it (once per kind) and acknowledges it, so one bad record cannot stop the
ledger. Numbers that are not finite are refused the same way.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gridfleet.platform.records import OUTCOME_FIELDS, TRADE_ITEM_FIELDS

STATUSES = frozenset({"sent", "empty", "unusable", "unsent", "missing"})


class BadRecord(ValueError):
    """A record the ledger cannot take; the message says what is wrong."""


@dataclass
class Rows:
    """Rows per table, ready for one transaction."""

    by_table: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    bad: list[tuple[str, str]] = field(default_factory=list)  # (entry id, reason)
    finished_at: float | None = None

    def add(self, table: str, row: dict[str, Any]) -> None:
        self.by_table[table].append(row)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_table.values())


def _num(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRecord(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _int(record: Mapping[str, Any], key: str) -> int:
    value = record.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRecord(f"{key} must be an integer, got {value!r}")
    return value


def _opt_num(record: Mapping[str, Any], key: str) -> float | None:
    return None if record.get(key) is None else _num(record, key)


def _str(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise BadRecord(f"{key} must be a non-empty string, got {value!r}")
    return value


def _opt_str(record: Mapping[str, Any], key: str) -> str | None:
    return None if record.get(key) is None else _str(record, key)


def to_rows(run_id: str, entries: Iterable[tuple[str, Mapping[str, Any]]], now: float) -> Rows:
    """Rows for ``(stream entry id, record)`` pairs of run ``run_id``."""
    out = Rows()
    for entry_id, record in entries:
        one = Rows()  # a record is taken whole or not at all
        try:
            _one(one, run_id, entry_id, record, now)
        except BadRecord as exc:
            out.bad.append((entry_id, str(exc)))
            continue
        for table, rows in one.by_table.items():
            out.by_table[table].extend(rows)
        if one.finished_at is not None:
            out.finished_at = one.finished_at
    return out


def _one(out: Rows, run_id: str, entry_id: str, record: Mapping[str, Any], now: float) -> None:
    kind = record.get("kind")
    if kind == "trade":
        aggregator = _str(record, "aggregator")
        slot = _opt_str(record, "slot")
        items = record.get("items")
        if not isinstance(items, list):
            raise BadRecord("a trade record needs its items (gridfleet older than the ledger?)")
        for item in items:
            if not isinstance(item, list) or len(item) != len(TRADE_ITEM_FIELDS):
                raise BadRecord(f"trade item {item!r} is not {list(TRADE_ITEM_FIELDS)}")
            t = dict(zip(TRADE_ITEM_FIELDS, item, strict=True))
            if t["side"] not in ("buy", "sell") or t["market"] not in ("spot", "settlement"):
                raise BadRecord(f"trade item {item!r}: side or market unknown")
            out.add(
                "trades",
                {
                    "run_id": run_id,
                    "trade_id": _str(t, "trade_id"),
                    "asset_id": _str(t, "asset_id"),
                    "aggregator": aggregator,
                    "side": t["side"],
                    "market": t["market"],
                    "slot": slot,
                    "time": _opt_str(t, "time"),
                    "energy_kwh": _num(t, "energy_kwh"),
                    "price_ct": _num(t, "price_ct"),
                    "fee_ct": _num(t, "fee_ct"),
                    "order_id": _opt_str(t, "order_id"),
                },
            )
    elif kind == "round":
        round_id = _str(record, "round")
        outcomes = record.get("outcomes", [])
        if not isinstance(outcomes, list):
            raise BadRecord(f"outcomes must be a list, got {outcomes!r}")
        for item in outcomes:
            out.add("aggregator_rounds", _outcome_row(run_id, round_id, item))
        out.add(
            "rounds",
            {
                "run_id": run_id,
                "round_id": round_id,
                "slot": _str(record, "slot"),
                "tick": _int(record, "tick"),
                "aggregators": _int(record, "aggregators"),
                "shards": _int(record, "shards"),
                "hedged": _int(record, "hedged"),
                "commands": _int(record, "commands"),
                "refused": _int(record, "refused"),
                "strategy_errors": _int(record, "strategy_errors"),
                "latency_ms": _num(record, "latency_ms"),
                "budget_ms": _num(record, "budget_ms"),
                "on_time": bool(record.get("on_time")),
                "received_at": _opt_num(record, "received_at"),
            },
        )
    elif kind == "rejection":
        aggregator = _str(record, "aggregator")
        record_id = _opt_str(record, "rid") or entry_id
        items = record.get("items")
        if not isinstance(items, list):
            raise BadRecord("a rejection record needs its items")
        for seq, item in enumerate(items):
            if not (
                isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)
            ):
                raise BadRecord(f"rejection item {item!r} is not [asset, command, reason]")
            asset, command, reason = item
            out.add(
                "rejections",
                {
                    "run_id": run_id,
                    "record_id": record_id,
                    "seq": seq,
                    "aggregator": aggregator,
                    "transaction_id": _opt_str(record, "transaction_id"),
                    "asset_id": asset,
                    "command": command,
                    "reason": reason,
                },
            )
    elif kind == "gap":
        seconds = record.get("seconds")
        out.add(
            "gaps",
            {
                "run_id": run_id,
                "record_id": _opt_str(record, "rid") or entry_id,
                "cause": _str(record, "cause"),
                "rounds": _int(record, "rounds"),
                "seconds": _num(record, "seconds") if seconds is not None else None,
                "first_round": _opt_str(record, "first"),
                "last_round": _opt_str(record, "last"),
            },
        )
    elif kind == "finish":
        out.add("finishes", {"run_id": run_id, "aggregator": _str(record, "aggregator")})
        out.finished_at = now
    else:
        raise BadRecord(f"unknown record kind {kind!r}")


def _outcome_row(run_id: str, round_id: str, item: object) -> dict[str, Any]:
    if not isinstance(item, list) or len(item) != len(OUTCOME_FIELDS):
        raise BadRecord(f"round outcome {item!r} is not {list(OUTCOME_FIELDS)}")
    o = dict(zip(OUTCOME_FIELDS, item, strict=True))
    if o["status"] not in STATUSES:
        raise BadRecord(f"round outcome {item!r}: status not one of {sorted(STATUSES)}")
    if o["on_time"] is not None and not isinstance(o["on_time"], bool):
        raise BadRecord(f"round outcome {item!r}: on_time must be true, false or null")
    return {
        "run_id": run_id,
        "round_id": round_id,
        "aggregator": _str(o, "aggregator"),
        "status": o["status"],
        "event_ms": _opt_num(o, "event_ms"),
        "batch_ms": _opt_num(o, "batch_ms"),
        "on_time": o["on_time"],
        "commands": _int(o, "commands"),
        "refused": _int(o, "refused"),
        "strategy_errors": _int(o, "strategy_errors"),
        "transaction_id": _opt_str(o, "transaction_id"),
    }
