"""The embedded gsy-e-compatible exchange (``gridfleet sim``).

Modules, in the order data flows through them:

- ``grid``: the grid model (markets and assets), file loading, the generator, aggregator assignment
- ``profiles``: load, PV and storage energy per slot
- ``state``: asset energy, open orders, fees and trades of the running market
- ``matching``: vectorised two-sided pay-as-bid matching over the market tree
- ``stats``: per-market DSO statistics
- ``batch``: one BATCHED message -> state changes + gsy-e's per-command responses
- ``protocol_server``: Redis inbox, aggregator registry (CREATE/SELECT/...)
- ``events``: per-aggregator event JSON from shared pieces (``full`` / ``pruned`` trees)
- ``deadline``: exchange-side on-time / late / missing accounting
- ``runner``: the engine loop and :class:`Simulator`
- ``cli``: the ``sim`` click command
"""

from gridfleet.simulator.grid import (
    Grid,
    GridError,
    assign_aggregators,
    generate_grid,
    load_grid_file,
)
from gridfleet.simulator.runner import SimConfig, Simulator

__all__ = [
    "Grid",
    "GridError",
    "SimConfig",
    "Simulator",
    "assign_aggregators",
    "generate_grid",
    "load_grid_file",
]
