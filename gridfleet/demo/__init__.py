"""``gridfleet demo``: a whole fleet trading on the embedded exchange, on this machine.

- ``stack``: what runs (private Redis servers, the exchange, workers, coordinator, ingress,
  Flower), waiting for it to come up, the figures it measures, the report, stopping it all
- ``live``: the live view (rich panel) and the end-of-run summary table
- ``run``: one demo from start to report, with Ctrl-C handling; the click command is
  ``gridfleet.cli.demo``
"""

from gridfleet.demo.run import run_demo
from gridfleet.demo.stack import DemoError, DemoOptions, DemoStack

__all__ = ["DemoError", "DemoOptions", "DemoStack", "run_demo"]
