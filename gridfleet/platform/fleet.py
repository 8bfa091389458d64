"""From a fleet file to a live fleet: aggregators created, assets and markets selected.

:func:`plan_fleet` resolves names and globs into a :class:`FleetPlan` (pure);
:func:`connect_fleet` creates the aggregators on the exchange, registers and selects everything in
bulk, and returns a :class:`Fleet` with the uuids and the strategy tables the pipeline uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridfleet.config import (
    AggregatorSpec,
    ConfigError,
    FleetConfig,
    GridCatalog,
    StrategySpec,
    load_catalog,
    resolve_names,
)
from gridfleet.exchange.link import AggregatorRequest, ExchangeLink, link_catalog
from gridfleet.platform.shard import FleetSpec
from gridfleet.strategies import registry
from gridfleet.strategies.base import StrategyError
from gridfleet.strategies.context import AssetKind
from gridfleet.strategies.datafiles import DataFileError
from gridfleet.strategies.registry import StrategyConfigError, UnknownStrategyError

log = logging.getLogger(__name__)

KIND_NAMES = {
    AssetKind.LOAD: "load",
    AssetKind.PV: "pv",
    AssetKind.STORAGE: "storage",
    AssetKind.SMART_METER: "smart_meter",
}


@dataclass
class AggregatorPlan:
    spec: AggregatorSpec
    assets: list[str]
    markets: list[str]


@dataclass
class FleetPlan:
    config: FleetConfig
    aggregators: list[AggregatorPlan]
    # The exchange lists what may be traded (REST: its registry) and no grid file does: the
    # aggregators still hold their patterns, resolved by connect_fleet from the link.
    awaits_catalog: bool = False

    @property
    def asset_count(self) -> int:
        return sum(len(a.assets) for a in self.aggregators)


def plan_fleet(config: FleetConfig, catalog: GridCatalog | None = None) -> FleetPlan:
    """Resolve every aggregator's names and globs and check that every strategy builds (its
    name, parameters and data files), so that a fleet fails at start, not in a slot.

    Raises :class:`ConfigError` listing every problem found, each with its field path.
    """
    problems = strategy_problems(config)
    if catalog is None and config.grid_file is not None:
        try:
            catalog = load_catalog(config.grid_file)
        except ConfigError as exc:
            problems.append(f"grid_file: {exc}")
    if catalog is None and config.grid_file is None and config.exchange.is_rest:
        _raise(problems)
        plans = [AggregatorPlan(s, list(s.assets), list(s.markets)) for s in config.aggregators]
        return FleetPlan(config, plans, awaits_catalog=True)
    plans = _resolve(config, catalog, problems)
    _raise(problems)
    return FleetPlan(config, plans)


def _resolve(
    config: FleetConfig,
    catalog: GridCatalog | None,
    problems: list[str],
    source: str = "the grid file",
) -> list[AggregatorPlan]:
    known_assets = catalog.assets if catalog else None
    known_markets = catalog.markets if catalog else None
    plans = []
    owner: dict[str, str] = {}
    for i, spec in enumerate(config.aggregators):
        try:
            assets = resolve_names(spec.assets, known_assets, "asset", spec.name, source)
            markets = resolve_names(spec.markets, known_markets, "market", spec.name, source)
        except ConfigError as exc:
            problems.append(f"aggregators.{i}: {exc}")
            continue
        for name in assets:
            if name in owner:
                problems.append(
                    f"aggregators.{i}.assets: asset {name!r} is in aggregators {owner[name]!r} and {spec.name!r}"
                )
            owner.setdefault(name, spec.name)
        plans.append(AggregatorPlan(spec, assets, markets))
    return plans


def _raise(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the fleet:\n  " + "\n  ".join(problems))


def resolve_from_link(plan: FleetPlan, link: ExchangeLink, timeout: float = 60.0) -> None:
    """Resolve a plan that awaits its catalogue against what the link says the exchange offers
    (in place: the plan's aggregators get their names). Raises :class:`ConfigError` like
    :func:`plan_fleet`, naming the exchange's registry as the source."""
    if not plan.awaits_catalog:
        return
    found = link_catalog(link, timeout)
    if found is None:
        raise ConfigError('globs and ["*"] need `grid_file`: this exchange lists no assets')
    catalog = GridCatalog(
        assets=found.assets,
        markets=found.markets,
        kinds={k: v for k, v in found.kinds.items() if v in KIND_NAMES.values()},  # type: ignore[misc]
    )
    problems: list[str] = []
    wanted = {a.spec.name for a in plan.aggregators}  # an ingress partition keeps a part
    plans = _resolve(plan.config, catalog, problems, "the exchange's registry")
    _raise(problems)
    plan.aggregators = [p for p in plans if p.spec.name in wanted]
    plan.awaits_catalog = False


def _strategy_specs(agg: AggregatorSpec) -> Iterator[tuple[str, StrategySpec]]:
    """Every strategy an aggregator names, with its field path inside the aggregator."""
    yield "strategy", agg.strategy
    for kind, spec in agg.by_kind.items():
        yield f"by_kind.{kind}", spec
    for name, spec in agg.by_asset.items():
        yield f"by_asset.{name}", spec
    if agg.market_strategy is not None:
        yield "market_strategy", agg.market_strategy


def strategy_problems(config: FleetConfig) -> list[str]:
    """Build every strategy of the fleet once; one line per problem, starting with its field
    path (``aggregators.0.strategy.params.path: ... file not found``). Empty: all build."""
    problems: list[str] = []
    built: set[str] = set()
    for i, agg in enumerate(config.aggregators):
        for where, spec in _strategy_specs(agg):
            at = f"aggregators.{i}.{where}"
            if spec.key() in built:
                continue
            try:
                registry.build(spec.name, spec.params)
            except UnknownStrategyError as exc:
                problems.append(f"{at}.name: {exc}")
            except StrategyConfigError as exc:
                for err in exc.errors:
                    field_path = ".".join(str(p) for p in err.get("loc", ()))
                    problems.append(
                        f"{at}.params{'.' + field_path if field_path else ''}: "
                        f"{err.get('msg', 'invalid')}"
                    )
            except DataFileError as exc:
                param = _param_naming(spec.params, exc.path)
                problems.append(f"{at}.params{'.' + param if param else ''}: {exc}")
            except StrategyError as exc:
                problems.append(f"{at}: {exc}")
            else:
                built.add(spec.key())
    return problems


def _param_naming(params: Any, path: Path, prefix: str = "") -> str | None:
    """The dotted path of the parameter (nested ones too) that names the file ``path``."""
    if isinstance(params, dict):
        items: Any = params.items()
    elif isinstance(params, list):
        items = enumerate(params)
    else:
        return None
    for key, value in items:
        here = f"{prefix}{key}"
        if isinstance(value, str) and value and (Path(value) == path or path.is_relative_to(value)):
            return here
        found = _param_naming(value, path, here + ".")
        if found is not None:
            return found
    return None


@dataclass
class Fleet:
    """A connected fleet: uuids and the tables that map each asset to its strategy."""

    plan: FleetPlan
    aggregator_uuid: dict[str, str]  # name -> uuid
    asset_uuid: dict[str, str]  # name -> uuid
    market_uuid: dict[str, str]  # name -> uuid
    owner_of: dict[str, str]  # device uuid -> aggregator uuid
    spec: FleetSpec  # strategies and the tables that say which asset and market each serves
    selection_errors: dict[str, str] = field(default_factory=dict)  # device uuid -> reason
    failures: dict[str, str] = field(default_factory=dict)  # name -> why it is not selected

    @property
    def aggregator_name(self) -> dict[str, str]:
        return {u: n for n, u in self.aggregator_uuid.items()}

    @property
    def own_markets(self) -> dict[str, frozenset[str]]:
        return self.spec.own_markets


def build_tables(
    plan: FleetPlan,
    aggregator_uuid: dict[str, str],
    asset_uuid: dict[str, str],
    market_uuid: dict[str, str],
) -> Fleet:
    """Strategy tables for a fleet whose uuids are known (no I/O)."""
    asset_specs: list[StrategySpec] = []
    market_specs: list[StrategySpec] = []
    index: dict[str, int] = {}
    m_index: dict[str, int] = {}

    def idx(spec: StrategySpec, specs: list[StrategySpec], table: dict[str, int]) -> int:
        key = spec.key()
        if key not in table:
            table[key] = len(specs)
            specs.append(spec)
        return table[key]

    fleet_by_asset: dict[str, int] = {}
    by_kind: dict[str, list[int]] = {}
    market_strategy: dict[str, int] = {}
    own_markets: dict[str, frozenset[str]] = {}
    owner_of: dict[str, str] = {}
    for agg in plan.aggregators:
        a_uuid = aggregator_uuid[agg.spec.name]
        by_kind[a_uuid] = [
            idx(agg.spec.strategy_for("", KIND_NAMES[k]), asset_specs, index)  # type: ignore[arg-type]
            for k in AssetKind
        ]
        for name, spec in agg.spec.by_asset.items():
            if name in asset_uuid:
                fleet_by_asset[asset_uuid[name]] = idx(spec, asset_specs, index)
        for name in agg.assets:
            if name in asset_uuid:  # an asset that did not register is not traded
                owner_of[asset_uuid[name]] = a_uuid
        mine = frozenset(market_uuid[m] for m in agg.markets if m in market_uuid)
        own_markets[a_uuid] = mine
        for m in mine:
            owner_of[m] = a_uuid
            assert agg.spec.market_strategy is not None
            market_strategy[m] = idx(agg.spec.market_strategy, market_specs, m_index)
    needs_names = any(s.name == "requirements" for s in asset_specs)
    fleet_spec = FleetSpec(
        strategies=[{"name": s.name, "params": s.params} for s in asset_specs],
        market_strategies=[{"name": s.name, "params": s.params} for s in market_specs],
        accepts_requirements=plan.config.accepts_requirements,
        asset_uuids_by_name=dict(asset_uuid) if needs_names else None,
        by_kind=by_kind,
        by_asset=fleet_by_asset,
        market_strategy=market_strategy,
        own_markets=own_markets,
    )
    return Fleet(
        plan=plan,
        aggregator_uuid=aggregator_uuid,
        asset_uuid=asset_uuid,
        market_uuid=market_uuid,
        owner_of=owner_of,
        spec=fleet_spec,
    )


class SelectionFailed(RuntimeError):
    """Some of the fleet's assets or markets could not be selected, and the policy is to stop."""


def connect_fleet(
    link: ExchangeLink,
    plan: FleetPlan,
    timeout: float | None = None,
    *,
    stop_on_failure: bool | None = None,
) -> Fleet:
    """Bring the plan's aggregators up on the exchange (whatever the transport) and build the
    strategy tables from the uuids it answered with.

    Aggregators keep their identity across runs (the fleet's namespace is its id), so a restart
    reuses them and their selections. What could not be selected is logged by name with the
    exchange's reason; the fleet goes on without it unless ``stop_on_failure`` (default: the
    fleet file's ``on_unselected: stop``).
    """
    if stop_on_failure is None:
        stop_on_failure = plan.config.on_unselected == "stop"
    if timeout is None:
        timeout = plan.config.bring_up_timeout_s
    resolve_from_link(plan, link, timeout)
    up = link.bring_up(
        [AggregatorRequest(a.spec.name, a.assets, a.markets) for a in plan.aggregators],
        timeout=timeout,
        fleet_id=plan.config.namespace,
    )
    failures = up.failures()
    if failures:
        shown = "; ".join(f"{name!r}: {why}" for name, why in list(failures.items())[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        log.error("%d assets or markets not selected: %s%s", len(failures), shown, more)
        if stop_on_failure:
            raise SelectionFailed(f"{len(failures)} not selected: {shown}{more}")
    fleet = build_tables(plan, up.aggregator_uuid, up.asset_uuid, up.market_uuid)
    fleet.selection_errors = up.selection_errors
    fleet.failures = failures
    wanted_assets = plan.asset_count
    wanted_markets = sum(len(a.markets) for a in plan.aggregators)
    log.info(
        "fleet connected: %d aggregators (%d reused from an earlier run), %d of %d assets and"
        " %d of %d markets selected",
        len(up.aggregator_uuid),
        len(up.reused),
        wanted_assets - sum(1 for a in plan.aggregators for n in a.assets if n in failures),
        wanted_assets,
        wanted_markets - sum(1 for a in plan.aggregators for m in a.markets if m in failures),
        wanted_markets,
    )
    return fleet
