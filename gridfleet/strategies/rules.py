"""The exchange's rules on orders, as facts strategies must obey: the one definition of each.

They live here, at the bottom of the dependency graph, because strategies may import nothing
else of gridfleet and must skip the orders these rules refuse; the wire's validator
(:mod:`gridfleet.exchange.outbound`) and the embedded exchange (:mod:`gridfleet.simulator`) take
them through :mod:`gridfleet.exchange.rules`. A test fails when a second definition appears.
"""

from __future__ import annotations

MIN_ORDER_ENERGY_KWH = 2e-5
"""The exchange rejects orders with energy at or below this; strategies skip such assets."""

OFFER_TOLERANCE_KWH = 2e-5
"""The exchange lets an offer exceed the available energy by this much (bids get no tolerance)."""
