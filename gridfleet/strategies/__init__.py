"""Pure trading strategies: market context and asset batch in, commands and new state out.

Nothing in this package imports ``gridfleet.platform`` or ``gridfleet.workers``.
"""
