"""Pure trading strategies: market context and asset batch in, commands and new state out.

Nothing in this package imports ``gridfleet.platform`` or ``gridfleet.workers``.

Where to look:

* ``context.py`` / ``commands.py``: what a strategy sees and what it says (the contract);
* ``base.py``: :class:`AssetStrategy`, :class:`PerAssetStrategy`, :class:`MarketStrategy`,
  the state contract and how ``dso_market_stats`` answers reach a market strategy;
* ``registry.py``: ``build(name_or_dotted_path, params)``, entry points ``gridfleet.strategies``;
* ``builtin/``: the SDK's templates (linear ramp, fixed rate, requirements, forecasts,
  settlement, grid fees: constant, percent, time of use, Aziiz) and ``composite``;
* ``fees.py``: grid fees along paths for a whole tree; ``datafiles.py``: validated data files;
* ``invariants.py``: the order rules every strategy result must pass.
"""

from gridfleet.strategies.base import (
    DSO_MARKET_STATS_KEY,
    AssetStrategy,
    MarketResult,
    MarketStrategy,
    PerAssetStrategy,
    StrategyConfig,
    StrategyError,
)
from gridfleet.strategies.registry import build

__all__ = [
    "DSO_MARKET_STATS_KEY",
    "AssetStrategy",
    "MarketResult",
    "MarketStrategy",
    "PerAssetStrategy",
    "StrategyConfig",
    "StrategyError",
    "build",
]
