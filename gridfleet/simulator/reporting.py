"""What the exchange did (:class:`Counts`) and the deadline report built from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gridfleet.simulator.deadline import DeadlineTracker, percentiles
from gridfleet.simulator.grid import Grid
from gridfleet.simulator.simconfig import SimConfig


@dataclass
class Counts:
    """What the exchange did so far."""

    rounds: int = 0
    events_sent: int = 0
    batches_received: int = 0
    batches_answered: int = 0
    commands: int = 0
    trades: int = 0
    energy_traded_kwh: float = 0.0  # spot
    settlement_markets: bool = False  # were they on in this run
    settlement_trades: int = 0
    settlement_energy_kwh: float = 0.0
    settlement_deviation_kwh: float = 0.0  # |measured - spot| over the settlement markets
    settlement_unsettled_kwh: float = 0.0  # of it, left unsettled (markets closed or still open)
    bytes_sent: int = 0  # event payload bytes (market, tick, trade)
    undelivered_sends: int = 0  # passes (rounds, answers, heartbeats) the door could not send
    round_ms: list[float] = field(default_factory=list)  # match + build + publish of each round
    match_ms: list[float] = field(default_factory=list)  # the matching part of it
    event_round_ms: list[float] = field(default_factory=list)  # refresh + build + publish ticks
    trade_events_ms: list[float] = field(default_factory=list)


def _rounded(values: list[float]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 3) for k, v in percentiles(values).items()}


def deadline_report(
    grid: Grid,
    config: SimConfig,
    counts: Counts,
    deadline: DeadlineTracker,
    names: dict[str, str],
) -> dict[str, Any]:
    """The deadline report (see :mod:`deadline`), with the run's counts in ``meta``;
    ``names``: aggregator uuid -> name."""
    c = asdict(counts)
    round_ms = c.pop("round_ms")
    match_ms = c.pop("match_ms")
    event_ms = c.pop("event_round_ms")
    c.pop("trade_events_ms")
    cfg = asdict(config)
    cfg["slot_length"] = config.slot_length.total_seconds()
    cfg["start"] = config.start.isoformat()
    return deadline.report(
        {
            "grid": grid.describe(),
            "config": cfg,
            "counts": c,
            "round_build_publish_ms": _rounded(round_ms),
            "event_round_ms": _rounded(event_ms),
            "match_ms": _rounded(match_ms),
            "first_slot_excluded": True,
        },
        names=names,
    )
