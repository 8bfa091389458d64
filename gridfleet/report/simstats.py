"""Market statistics from a running or finished :class:`Simulator`, via public attributes only.

The simulator keeps only the *last closed* slot's DSO statistics (``sim.state.stats``) and
cumulative totals (``sim.state.total_trades`` / ``total_energy``); it has no per-slot history.
So :func:`market_stats_from_simulator` returns that one slot, and :class:`SimStatsRecorder`
samples the simulator from a thread while it runs to collect every slot.
"""

from __future__ import annotations

import math
import threading
from typing import Any

# A slot lasts 10 tick intervals (>= 0.5 s in practice); sampling every 10 ms catches each one.
POLL_S = 0.01


def _f(x: Any) -> float | None:
    v = float(x)
    return None if math.isnan(v) else round(v, 8)


def market_stats_from_simulator(sim: Any, slot: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{slot, market, traded_kwh, avg_rate, fee_revenue_ct, import_kwh, export_kwh}``
    for the slot whose statistics the simulator holds now (its last closed slot).

    ``slot`` is that slot's index; by default the previous one while a slot is open, the
    current one once the run finished (the last slot is closed before the finish events).
    Returns ``[]`` before the first slot closed.
    """
    state = sim.state
    if slot is None:
        slot = state.slot_index if sim.finished.is_set() else state.slot_index - 1
    if slot < 0:
        return []
    stats = state.stats  # one reference read: the engine replaces it, never mutates it
    label = state.slot_label(slot)
    return [
        {
            "slot": label,
            "market": m.name,
            "traded_kwh": _f(stats.volume[m.index]) or 0.0,
            "avg_rate": _f(stats.avg_rate[m.index]),
            "fee_revenue_ct": _f(stats.fee_revenue[m.index]) or 0.0,
            "import_kwh": _f(stats.imported[m.index]) or 0.0,
            "export_kwh": _f(stats.exported[m.index]) or 0.0,
        }
        for m in sim.grid.markets
    ]


class SimStatsRecorder:
    """Collects every slot's market statistics and exchange totals while a simulation runs.

    >>> rec = SimStatsRecorder(sim).start()   # after sim.start()
    >>> sim.wait(); rec.stop()
    >>> write_report(..., market_stats=rec.market_stats, slot_totals=rec.slot_totals)

    ``slot_totals`` rows are ``{slot, trades, energy_kwh}``: differences of the exchange's
    cumulative totals at slot changes. Matching of a new slot starts one tick interval after
    it opens, so a sample taken within ``POLL_S`` of the change is exact.
    """

    def __init__(self, sim: Any, poll_s: float = POLL_S) -> None:
        self.sim = sim
        self.poll_s = poll_s
        self.market_stats: list[dict[str, Any]] = []
        self.slot_totals: list[dict[str, Any]] = []
        self._done: set[int] = set()
        self._base = (0, 0.0)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-stats", daemon=True)

    def start(self) -> SimStatsRecorder:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop sampling; takes a last sample so a finished run's final slot is included."""
        self._halt.set()
        self._thread.join(timeout)
        self.sample()

    def sample(self) -> None:
        """Record the slot whose statistics the simulator holds, if not recorded yet."""
        state = self.sim.state
        finished = self.sim.finished.is_set()
        slot = state.slot_index if finished else state.slot_index - 1
        if slot < 0 or slot in self._done:
            return
        self._done.add(slot)
        self.market_stats.extend(market_stats_from_simulator(self.sim, slot))
        trades, energy = int(state.total_trades), float(state.total_energy)
        self.slot_totals.append(
            {
                "slot": state.slot_label(slot),
                "trades": trades - self._base[0],
                "energy_kwh": round(energy - self._base[1], 8),
            }
        )
        self._base = (trades, energy)

    def _run(self) -> None:
        while not self._halt.wait(self.poll_s):
            self.sample()
            if self.sim.finished.is_set():
                return
