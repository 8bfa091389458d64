"""The exchange's rules on orders, for the wire's validator and the embedded exchange.

Defined once in :mod:`gridfleet.strategies.rules` (strategies must obey them and may import
nothing else of gridfleet); this module is how the exchange side names them.
"""

from __future__ import annotations

from gridfleet.strategies.rules import MIN_ORDER_ENERGY_KWH, OFFER_TOLERANCE_KWH

__all__ = ["MIN_ORDER_ENERGY_KWH", "OFFER_TOLERANCE_KWH"]
