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

# an item of a trade record's ``items``: what gridfleet.platform.records writes
TRADE_ITEM_FIELDS = (
    "trade_id",
    "asset_id",
    "side",
    "energy_kwh",
    "price_ct",
    "fee_ct",
    "order_id",
    "market",
    "time",
)


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


def _str(record: Mapping[str, Any], key: str, optional: bool = False) -> str | None:
    value = record.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise BadRecord(f"{key} must be a non-empty string, got {value!r}")
    return value


def to_rows(run_id: str, entries: Iterable[tuple[str, Mapping[str, Any]]], now: float) -> Rows:
    """Rows for ``(stream entry id, record)`` pairs of run ``run_id``."""
    out = Rows()
    for entry_id, record in entries:
        try:
            _one(out, run_id, entry_id, record, now)
        except BadRecord as exc:
            out.bad.append((entry_id, str(exc)))
    return out


def _one(out: Rows, run_id: str, entry_id: str, record: Mapping[str, Any], now: float) -> None:
    kind = record.get("kind")
    if kind == "trade":
        aggregator = _str(record, "aggregator")
        slot = _str(record, "slot", optional=True)
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
                    "time": _str(t, "time", optional=True),
                    "energy_kwh": _num(t, "energy_kwh"),
                    "price_ct": _num(t, "price_ct"),
                    "fee_ct": _num(t, "fee_ct"),
                    "order_id": _str(t, "order_id", optional=True),
                },
            )
    elif kind == "round":
        out.add(
            "rounds",
            {
                "run_id": run_id,
                "round_id": _str(record, "round"),
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
            },
        )
    elif kind == "rejection":
        aggregator = _str(record, "aggregator")
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
                    "entry_id": entry_id,
                    "seq": seq,
                    "aggregator": aggregator,
                    "transaction_id": _str(record, "transaction_id", optional=True),
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
                "entry_id": entry_id,
                "cause": _str(record, "cause"),
                "rounds": _int(record, "rounds"),
                "seconds": _num(record, "seconds") if seconds is not None else None,
                "first_round": _str(record, "first", optional=True),
                "last_round": _str(record, "last", optional=True),
            },
        )
    elif kind == "finish":
        out.add("finishes", {"run_id": run_id, "aggregator": _str(record, "aggregator")})
        out.finished_at = now
    else:
        raise BadRecord(f"unknown record kind {kind!r}")
