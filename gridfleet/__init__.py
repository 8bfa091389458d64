"""gridfleet: run fleets of energy-trading aggregators on the Grid Singularity Exchange.

Layout (dependencies point one way, strategies <- workers <- platform is NOT allowed):

- ``gridfleet.strategies``: pure strategy code; imports nothing from the other two.
- ``gridfleet.platform``: the exchange protocol and link, ingress, coordinator, simulator.
- ``gridfleet.workers``: the Celery app and its shard task.
"""

__version__ = "0.1.0"
