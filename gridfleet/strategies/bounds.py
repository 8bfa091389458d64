"""Upper bounds gridfleet puts on every number it sends, where the exchange sets none.

gsy-e checks that an order's energy is above 2e-5 kWh and its price not negative, but nothing
above: an energy of 1e308 kWh or a price that overflowed to ``inf`` (which JSON encoders write as
``null``, a bid without a price, a form that kills the exchange) would go through. These bounds
lie far above any real asset and any real price, and far below where float64 stops being exact
enough for the exchange's own tolerances:

* energy: 1e7 kWh (10 GWh) per order, 40 times a 1 GW plant's output in a 15-minute slot; at
  1e7 the spacing of float64 is 2e-9 kWh, four orders below the exchange's 2e-5 kWh tolerance;
* rate: 1e6 ct/kWh (10 000 EUR/kWh), 2 000 times the EU day-ahead price cap (5 EUR/kWh); it caps
  grid fees (``fee_const``) too;
* price: their product, 1e13 ct; float64 still resolves 0.002 ct there.

They live here, at the bottom of the dependency graph, so strategies and the outbound validator
(:mod:`gridfleet.exchange.outbound`) read the same numbers.
"""

from __future__ import annotations

MAX_ORDER_ENERGY_KWH = 1e7
"""No order, forecast or measurement gridfleet sends carries more energy than this."""

MAX_RATE_CT_PER_KWH = 1e6
"""No order's rate (price / energy) and no constant grid fee is above this."""

MAX_ORDER_PRICE_CT = MAX_ORDER_ENERGY_KWH * MAX_RATE_CT_PER_KWH
"""No order's total price is above this (1e13 ct)."""
