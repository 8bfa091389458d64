"""The embedded gsy-e-compatible exchange (``gridfleet sim``).

Modules, in the order data flows through them:

- ``grid``: the grid model (markets and assets), file loading, the generator, aggregator assignment
- ``profiles``: load, PV and storage energy per slot
- ``state``: asset energy, open orders, fees and trades of the running market
- ``matching``: vectorised two-sided pay-as-bid matching over the market tree
- ``stats``: per-market DSO statistics
- ``batch``: one BATCHED message -> state changes + gsy-e's per-command responses
- ``registry``: aggregators, registrations, who selected which device (CREATE/SELECT/...)
- ``selection``: the device map and what the engine derives from the selections
- ``events``: per-aggregator event JSON from shared pieces (``full`` / ``pruned`` trees)
- ``deadline``: exchange-side on-time / late / missing accounting
- ``door``: the seam between the engine and its doors (inbound messages, outboxes)
- ``redis_door``: gsy-e's protocol over Redis (the reader thread, pipelined publishing)
- ``intake``: applying what came in between rounds (commands, registrations, batches)
- ``simconfig``: :class:`SimConfig`, the tick arithmetic
- ``engine``: the market clock, tick rounds, trade events, the finish
- ``reporting``: the run's counts and the deadline report
- ``runner``: :class:`Simulator`, the engine behind the Redis door
- ``standalone``: what ``gridfleet sim`` does around it (grid building, the final report)
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
