"""How a simulation runs in time: :class:`SimConfig` and the tick arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from gridfleet.simulator.events import TreeMode

TICKS_PER_SLOT = 10


@dataclass
class SimConfig:
    """How a simulation runs. ``tick_interval=None`` means manual stepping (:meth:`Simulator.advance`)."""

    slots: int = 8
    slot_length: timedelta = timedelta(minutes=15)
    tick_interval: float | None = 1.0
    start: datetime = datetime(2024, 6, 1)
    paused: bool = False
    tree: TreeMode = "full"
    internal_tick: float = 0.01
    heartbeat_interval: float = 5.0
    config_id: str = ""
    # settlement markets (gridfleet.simulator.settlement); also on when the grid file says so
    settlement: bool = False
    seed: int = 0  # of the simulated measurements


def sim_seconds(config: SimConfig) -> float:
    """Real seconds a run takes once started (10 tick intervals per slot)."""
    return (
        math.inf
        if config.tick_interval is None
        else config.slots * TICKS_PER_SLOT * config.tick_interval
    )
