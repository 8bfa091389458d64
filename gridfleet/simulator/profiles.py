"""Energy profiles per slot: load demand curves, a PV solar curve, storage limits.

All functions are vectorised over assets: they take the grid's parameter arrays and return
one value per asset for one market slot, in kWh.
"""

from __future__ import annotations

import numpy as np

from gridfleet.simulator.grid import Grid, Kind


def load_shape(hour: np.ndarray) -> np.ndarray:
    """Relative household demand at ``hour`` (0-24), averaging 1.0 over a day.

    A night base load, a morning peak near 07:30 and a larger evening peak near 19:00.
    """
    h = np.mod(hour, 24.0)
    shape = (
        0.45 + 0.9 * np.exp(-(((h - 7.5) / 1.5) ** 2)) + 1.5 * np.exp(-(((h - 19.0) / 2.2) ** 2))
    )
    return shape / 0.79321  # mean of the raw curve over 24 h, so the average power is avg_power_kW


def solar_shape(hour: np.ndarray) -> np.ndarray:
    """Fraction of PV peak power at ``hour``: a half sine between 06:00 and 18:00 (summer-ish)."""
    h = np.mod(hour, 24.0)
    return np.where((h > 6.0) & (h < 18.0), np.sin(np.pi * (h - 6.0) / 12.0), 0.0)


def slot_energy(grid: Grid, slot_start_hour: float, slot_hours: float) -> np.ndarray:
    """Energy per asset for a slot starting at ``slot_start_hour``: demand for loads,
    production for PVs, 0 for storages (their limits come from :func:`storage_limits`)."""
    mid = slot_start_hour + slot_hours / 2.0 + grid.phase_h
    energy = np.zeros(grid.n_assets)
    loads = grid.kind == Kind.LOAD
    pvs = grid.kind == Kind.PV
    energy[loads] = grid.load_avg_kw[loads] * load_shape(mid[loads]) * slot_hours
    energy[pvs] = grid.pv_capacity_kw[pvs] * solar_shape(mid[pvs]) * slot_hours
    flat = grid.flat_energy_kwh >= 0
    energy[flat] = grid.flat_energy_kwh[flat]
    return np.round(energy, 8)


def storage_limits(
    grid: Grid, used_kwh: np.ndarray, slot_hours: float
) -> tuple[np.ndarray, np.ndarray]:
    """(energy a storage may buy, energy it may sell) this slot, from SoC and power limits."""
    cap = grid.storage_capacity_kwh
    per_slot = grid.storage_max_power_kw * slot_hours
    buy = np.clip(np.minimum(per_slot, cap - used_kwh), 0.0, None)
    sell = np.clip(np.minimum(per_slot, used_kwh - grid.storage_min_soc * cap), 0.0, None)
    not_storage = grid.kind != Kind.STORAGE
    buy[not_storage] = 0.0
    sell[not_storage] = 0.0
    return buy, sell
