"""gridfleet: run fleets of energy-trading aggregators on the Grid Singularity Exchange.

Layout (dependencies point one way; ``tests/test_layout.py`` checks them):

- ``gridfleet.strategies``: pure strategy code; imports nothing else of gridfleet.
- ``gridfleet.exchange``: the gsy-e wire (messages, outbound validation, the link interface and
  its transports).
- ``gridfleet.platform``: the fleet services (ingress, coordinator, rounds, shards).
- ``gridfleet.workers``: the Celery side.
- ``gridfleet.simulator``: the embedded exchange, a sibling of the client.
- ``gridfleet.runtime``: process plumbing; ``gridfleet.cli``: the commands.

See docs/architecture.md.
"""

__version__ = "0.1.0"
