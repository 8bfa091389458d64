"""Helpers for testing a strategy the way the pipeline runs it, without Redis or an exchange.

Build a tick's context and an asset batch from a few plain dicts, run a strategy on them through
the pipeline's own evaluation (:func:`gridfleet.platform.evaluate.evaluate_shard`: intents to wire
commands, the outbound validator, serialization) and get back the commands exactly as the batch
sent to the exchange would carry them::

    from gridfleet.testing import asset_batch, run_strategy, tick_context

    run = run_strategy(
        "fixed_rate",
        asset_batch([{"kind": "load", "energy_requirement_kwh": 0.5}, {"kind": "pv"}]),
        params={"rate": 12},
        ctx=tick_context(tick_index=0),
    )
    assert run.for_asset("load-1") == [
        {"type": "bid", "energy": 0.5, "price": 6.0, "replace_existing": True}
    ]

A command the exchange would refuse (or die on) fails the test with :class:`CommandRefused`,
naming the asset and the reason; an exception raised by the strategy reaches the test unchanged,
with a note saying where it was raised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gridfleet.exchange.outbound import GSY_E_1_3, ExchangeProfile
from gridfleet.platform.evaluate import Refusal, evaluate_shard, merge_fragments
from gridfleet.platform.rounds import next_slot
from gridfleet.strategies import registry
from gridfleet.strategies.base import AssetStrategy, MarketResult, MarketStrategy, Strategy
from gridfleet.strategies.commands import StrategyResult
from gridfleet.strategies.context import AssetBatch, AssetKind, MarketView, State, TickContext

__all__ = [
    "DEFAULT_ENERGY_KWH",
    "CommandRefused",
    "StrategyRun",
    "asset_batch",
    "market_views",
    "run_strategy",
    "tick_context",
]

WireCommand = dict[str, Any]

# The energy fields the exchange sends for each kind (its asset_info keys), with the value an
# asset gets when the dict leaves one out: enough to trade, so a strategy has something to do.
DEFAULT_ENERGY_KWH: Mapping[AssetKind, Mapping[str, float]] = {
    AssetKind.LOAD: {"energy_requirement_kwh": 1.0},
    AssetKind.PV: {"available_energy_kwh": 1.0},
    AssetKind.STORAGE: {
        "energy_to_buy_kwh": 1.0,
        "energy_to_sell_kwh": 1.0,
        "used_storage_kwh": 1.0,
        "free_storage_kwh": 1.0,
    },
    AssetKind.SMART_METER: {"energy_requirement_kwh": 1.0, "available_energy_kwh": 1.0},
}
"""Per kind: the energies it has and their defaults (kWh). Other energies of the batch are 0."""

_ENERGY_FIELDS = (
    "energy_requirement_kwh",
    "available_energy_kwh",
    "energy_to_buy_kwh",
    "energy_to_sell_kwh",
    "used_storage_kwh",
    "free_storage_kwh",
)
_ASSET_KEYS = frozenset(
    {"kind", "name", "uuid", "aggregator", "parent_market", "grid_fee", "unsettled_deviation_kwh"}
    | set(_ENERGY_FIELDS)
)
_MARKET_KEYS = frozenset(
    {"name", "uuid", "aggregator", "last_market_fee", "current_market_fee", "last_market_stats"}
)


class CommandRefused(AssertionError):
    """A strategy emitted commands that gridfleet would refuse to send to the exchange."""

    def __init__(self, strategy: str, refusals: list[tuple[str, Refusal]]) -> None:
        lines = [f"{label}: {r.command}: {r.reason}" for label, r in refusals]
        super().__init__(
            f"strategy {strategy!r} emitted {len(refusals)} command(s) the exchange would "
            "refuse:\n  " + "\n  ".join(lines)
        )
        self.refusals = [r for _, r in refusals]


# ------------------------------------------------------------------------------------ builders


def tick_context(
    *,
    market_slot: str = "2024-06-01T12:00",
    tick_index: int = 0,
    num_ticks: int = 10,
    is_market_event: bool | None = None,
    feed_in_tariff_rate: float = 10.0,
    market_maker_rate: float = 30.0,
    slot_length_s: int = 900,
    asset_uuids_by_name: Mapping[str, str] | None = None,
) -> TickContext:
    """A round's context; the market event when ``tick_index`` is 0 unless told otherwise.

    ``next_market_slot`` is worked out from ``market_slot`` as the pipeline does.
    """
    if not 0 <= tick_index < num_ticks:
        raise ValueError(f"tick_index {tick_index} outside 0..{num_ticks - 1}")
    return TickContext(
        market_slot=market_slot,
        next_market_slot=next_slot(market_slot, slot_length_s),
        tick_index=tick_index,
        num_ticks=num_ticks,
        is_market_event=tick_index == 0 if is_market_event is None else is_market_event,
        feed_in_tariff_rate=feed_in_tariff_rate,
        market_maker_rate=market_maker_rate,
        slot_length_s=slot_length_s,
        asset_uuids_by_name=asset_uuids_by_name,
    )


def _kind(value: object, where: str) -> AssetKind:
    if isinstance(value, AssetKind):
        return value
    if isinstance(value, str) and value.upper() in AssetKind.__members__:
        return AssetKind[value.upper()]
    known = ", ".join(k.name.lower() for k in AssetKind)
    raise ValueError(f"{where}: kind must be one of {known}, got {value!r}")


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def asset_batch(
    assets: Iterable[Mapping[str, Any]],
    *,
    aggregator: str = "aggregator-1",
    parent_market: str = "House 1",
) -> AssetBatch:
    """An :class:`AssetBatch` from one dict per asset.

    Each dict needs ``kind`` (``"load"``, ``"pv"``, ``"storage"``, ``"smart_meter"`` or an
    :class:`AssetKind`) and may give ``name`` (default ``<kind>-<n>``, counted per kind), ``uuid``
    (default ``uuid-<name>``), ``aggregator``, ``parent_market``, ``grid_fee`` (ct/kWh along the
    path to the Market Maker, default 0), ``unsettled_deviation_kwh`` (``{time_slot: kWh}``) and
    the energies its kind has (see :data:`DEFAULT_ENERGY_KWH`). An unknown key, an energy the kind
    does not have, a repeated name or uuid is a ``ValueError`` naming the asset.
    """
    rows: list[dict[str, Any]] = []
    per_kind: dict[AssetKind, int] = {}
    for index, spec in enumerate(assets):
        if not isinstance(spec, Mapping):
            raise ValueError(f"asset #{index}: expected a dict, got {spec!r}")
        where = f"asset #{index}" + (f" ({spec['name']!r})" if "name" in spec else "")
        unknown = sorted(set(spec) - _ASSET_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_ASSET_KEYS)}")
        if "kind" not in spec:
            raise ValueError(f"{where}: 'kind' is required")
        kind = _kind(spec["kind"], where)
        per_kind[kind] = per_kind.get(kind, 0) + 1
        name = str(spec.get("name", f"{kind.name.lower()}-{per_kind[kind]}"))
        where = f"asset {name!r}"
        energies = DEFAULT_ENERGY_KWH[kind]
        foreign = sorted(k for k in _ENERGY_FIELDS if k in spec and k not in energies)
        if foreign:
            raise ValueError(
                f"{where}: a {kind.name.lower()} has no {foreign}; it has {sorted(energies)}"
            )
        row = {
            "uuid": str(spec.get("uuid", f"uuid-{name}")),
            "name": name,
            "aggregator": str(spec.get("aggregator", aggregator)),
            "parent_market": str(spec.get("parent_market", parent_market)),
            "kind": int(kind),
            "grid_fee": _number(spec.get("grid_fee", 0.0), f"{where}: grid_fee"),
            "unsettled_deviation_kwh": _deviations(spec.get("unsettled_deviation_kwh"), where),
        }
        for key in _ENERGY_FIELDS:
            row[key] = _number(spec.get(key, energies.get(key, 0.0)), f"{where}: {key}")
        rows.append(row)
    for key in ("name", "uuid"):
        values = [r[key] for r in rows]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"asset {key}s must be unique; repeated: {repeated}")
    if not rows:
        return AssetBatch.empty()

    def column(key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=np.float64)

    deviations = [r["unsettled_deviation_kwh"] for r in rows]
    return AssetBatch(
        uuid=[r["uuid"] for r in rows],
        name=[r["name"] for r in rows],
        aggregator=[r["aggregator"] for r in rows],
        parent_market=[r["parent_market"] for r in rows],
        kind=np.array([r["kind"] for r in rows], dtype=np.int8),
        energy_requirement_kwh=column("energy_requirement_kwh"),
        available_energy_kwh=column("available_energy_kwh"),
        energy_to_buy_kwh=column("energy_to_buy_kwh"),
        energy_to_sell_kwh=column("energy_to_sell_kwh"),
        used_storage_kwh=column("used_storage_kwh"),
        free_storage_kwh=column("free_storage_kwh"),
        grid_fee=column("grid_fee"),
        # The pipeline leaves the column empty when no asset has a deviation: so do we.
        unsettled_deviation_kwh=deviations if any(d is not None for d in deviations) else [],
    )


def _deviations(value: object, where: str) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: unsettled_deviation_kwh must be {{time_slot: kWh}}")
    return {
        str(slot): _number(kwh, f"{where}: unsettled_deviation_kwh[{slot!r}]")
        for slot, kwh in value.items()
    }


def market_views(
    markets: Iterable[Mapping[str, Any]], *, aggregator: str = "aggregator-1"
) -> list[MarketView]:
    """The markets a market (grid-operator) strategy manages, one dict each.

    Each dict needs ``name`` and may give ``uuid`` (default ``uuid-<name>``), ``aggregator``,
    ``last_market_fee``, ``current_market_fee`` (ct/kWh or None) and ``last_market_stats``.
    """
    views = []
    for index, spec in enumerate(markets):
        if not isinstance(spec, Mapping):
            raise ValueError(f"market #{index}: expected a dict, got {spec!r}")
        unknown = sorted(set(spec) - _MARKET_KEYS)
        if unknown:
            raise ValueError(
                f"market #{index}: unknown key(s) {unknown}; allowed: {sorted(_MARKET_KEYS)}"
            )
        if "name" not in spec:
            raise ValueError(f"market #{index}: 'name' is required")
        name = str(spec["name"])
        fees = {
            key: None if spec.get(key) is None else _number(spec[key], f"market {name!r}: {key}")
            for key in ("last_market_fee", "current_market_fee")
        }
        views.append(
            MarketView(
                uuid=str(spec.get("uuid", f"uuid-{name}")),
                name=name,
                aggregator=str(spec.get("aggregator", aggregator)),
                last_market_fee=fees["last_market_fee"],
                current_market_fee=fees["current_market_fee"],
                last_market_stats=dict(spec.get("last_market_stats") or {}),
            )
        )
    return views


# ------------------------------------------------------------------------------------ running


@dataclass(slots=True)
class StrategyRun:
    """What one round of a strategy produced, as the exchange would receive it."""

    strategy: str
    ctx: TickContext
    assets: AssetBatch
    markets: list[MarketView]
    # aggregator uuid -> the BATCHED message's ``batch_commands``: {asset uuid: [wire command]}
    batch_commands: dict[str, dict[str, list[WireCommand]]] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)  # commands that would not be sent
    state: dict[str, State] = field(default_factory=dict)  # uuid -> new state (changed only)

    def _labels(self) -> dict[str, str]:
        names = dict(zip(self.assets.uuid, self.assets.name, strict=True))
        names.update((m.uuid, m.name) for m in self.markets)
        return {uuid: f"asset {name!r} ({uuid})" for uuid, name in names.items()}

    def uuid_of(self, asset: str) -> str:
        """The uuid of an asset or market given by name or uuid."""
        if asset in self.assets.uuid or any(m.uuid == asset for m in self.markets):
            return asset
        by_name = {n: u for u, n in zip(self.assets.uuid, self.assets.name, strict=True)}
        by_name.update((m.name, m.uuid) for m in self.markets)
        if asset not in by_name:
            raise KeyError(f"no asset or market {asset!r}; known: {sorted(by_name)}")
        return by_name[asset]

    def for_asset(self, asset: str) -> list[WireCommand]:
        """The wire commands sent for one asset or market (by name or uuid); [] if none."""
        uuid = self.uuid_of(asset)
        for commands in self.batch_commands.values():
            if uuid in commands:
                return commands[uuid]
        return []

    @property
    def commands(self) -> dict[str, list[WireCommand]]:
        """Every asset's wire commands, by asset uuid, over all aggregators."""
        return {u: c for per_agg in self.batch_commands.values() for u, c in per_agg.items()}

    def assert_valid(self) -> None:
        """Raise :class:`CommandRefused` if any command would be refused."""
        if self.refusals:
            labels = self._labels()
            raise CommandRefused(
                self.strategy, [(labels.get(r.asset, repr(r.asset)), r) for r in self.refusals]
            )


def _check_rows(result: StrategyResult, size: int) -> None:
    # A row outside the batch would fail the whole shard in the pipeline, and a negative one
    # would silently go to another asset (numpy wraps it): say so here, at the strategy.
    rows = result.orders.row.tolist() + [row for row, _ in result.commands]
    bad = sorted({row for row in rows if not 0 <= row < size})
    if bad:
        raise AssertionError(f"strategy returned rows {bad} outside its batch of {size} assets")


class _RecordingAssets(AssetStrategy):
    """Runs a strategy in the pipeline and keeps what it raised (the pipeline logs a repr)."""

    name = "under test"

    def __init__(self, inner: AssetStrategy) -> None:
        super().__init__()
        self.inner = inner
        self.raised: list[tuple[str, Exception]] = []

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        return self.evaluate(ctx, assets, state)

    def evaluate(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        try:
            result = self.inner.evaluate(ctx, assets, state)
            _check_rows(result, len(assets))
            return result
        except Exception as exc:
            self.raised.append((", ".join(sorted(set(assets.aggregator))), exc))
            raise


class _RecordingMarkets(MarketStrategy):
    """The same for a market strategy."""

    name = "under test"

    def __init__(self, inner: MarketStrategy) -> None:
        super().__init__()
        self.inner = inner
        self.raised: list[tuple[str, Exception]] = []

    def on_market(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        return self.evaluate(ctx, markets, state)

    def evaluate(
        self, ctx: TickContext, markets: list[MarketView], state: Mapping[str, State]
    ) -> MarketResult:
        try:
            return self.inner.evaluate(ctx, markets, state)
        except Exception as exc:
            self.raised.append((", ".join(sorted({m.aggregator for m in markets})), exc))
            raise


def _build(strategy: Strategy | str, params: Mapping[str, Any] | None) -> Strategy:
    if isinstance(strategy, str):
        return registry.build(strategy, params)
    if params is not None:
        raise TypeError("params are for a strategy given by name; this one is already built")
    if not isinstance(strategy, AssetStrategy | MarketStrategy):
        raise TypeError(f"not a strategy: {strategy!r}")
    return strategy


def run_strategy(
    strategy: Strategy | str,
    assets: AssetBatch | Iterable[Mapping[str, Any]] = (),
    *,
    params: Mapping[str, Any] | None = None,
    ctx: TickContext | None = None,
    state: Mapping[str, State] | None = None,
    markets: Sequence[MarketView] | Iterable[Mapping[str, Any]] = (),
    profile: ExchangeProfile = GSY_E_1_3,
    check: bool = True,
) -> StrategyRun:
    """Run one round of ``strategy`` as a worker would, and return what would be sent.

    ``strategy`` is an instance, or a registry name (or dotted path) built with ``params``.
    Asset strategies run on ``assets`` (an :class:`AssetBatch` or dicts for :func:`asset_batch`),
    market strategies on ``markets`` (:class:`MarketView` or dicts for :func:`market_views`).
    ``ctx`` defaults to the market event of :func:`tick_context`, ``state`` to none stored.

    With ``check`` (the default) a command the outbound validator refuses raises
    :class:`CommandRefused`; without it, the refusals are in ``StrategyRun.refusals``. An
    exception the strategy raises is re-raised as it is, with a note.
    """
    built = _build(strategy, params)
    ctx = tick_context() if ctx is None else ctx
    stored: Mapping[str, State] = {} if state is None else state
    batch = assets if isinstance(assets, AssetBatch) else asset_batch(assets)
    views = [m if isinstance(m, MarketView) else market_views([m])[0] for m in markets]
    recorder: _RecordingAssets | _RecordingMarkets
    if isinstance(built, AssetStrategy):
        if not len(batch):
            raise ValueError(f"{built.name or built!r} is an asset strategy: give it assets")
        recorder = _RecordingAssets(built)
        out = evaluate_shard(
            ctx, batch, np.zeros(len(batch), dtype=np.int64), [recorder], stored, profile=profile
        )
    else:
        if not views:
            raise ValueError(f"{built.name or built!r} is a market strategy: give it markets")
        recorder = _RecordingMarkets(built)
        out = evaluate_shard(
            ctx,
            batch,
            np.zeros(len(batch), dtype=np.int64),
            [],
            stored,
            markets=views,
            market_strategy_index=[0] * len(views),
            market_strategies=[recorder],
            profile=profile,
        )
    name = built.name or type(built).__name__
    if recorder.raised:
        aggregators, exc = recorder.raised[0]
        exc.add_note(
            f"raised by strategy {name!r} for aggregator(s) {aggregators} at "
            f"{ctx.market_slot} tick {ctx.tick_index}: the pipeline would send none of their "
            "commands this round"
        )
        raise exc
    run = StrategyRun(
        strategy=name,
        ctx=ctx,
        assets=batch,
        markets=views,
        batch_commands={
            agg: orjson.loads(merge_fragments([fragment]))
            for agg, fragment in out.fragments.items()
        },
        refusals=out.refusals,
        state=out.state,
    )
    if check:
        run.assert_valid()
    return run
