"""The grid model: a tree of markets with assets as leaves, flattened into arrays.

A grid comes from a YAML/JSON file (:func:`load_grid_file`) or from the generator
(:func:`generate_grid`). Either way the result is a :class:`Grid`: markets and assets in flat,
index-addressed tables, which is what the vectorised matching and the event builder need.

File format (YAML shown; JSON is the same structure)::

    market_maker_rate: 30          # ct/kWh, optional (default 30)
    feed_in_tariff_rate: 10        # ct/kWh, optional (default 10)
    settlement_markets: true       # settlement markets after each slot, optional (default false)
    grid:
      name: Grid
      grid_fee_const: 0            # ct/kWh charged on energy crossing this market (optional)
      children:
        - name: House 1
          children:
            - {name: H1 Load0, type: load, avg_power_kW: 0.5}       # daily demand curve
            - {name: H1 Load1, type: load, energy_kWh: 0.1}         # flat: kWh every slot
            - {name: H1 PV1, type: pv, capacity_kW: 5}              # solar curve
            - {name: H1 Storage2, type: storage, capacity_kWh: 10, initial_soc: 50,
               max_power_kW: 3, min_soc: 10}

A Market Maker leaf is added under the root when the file has none.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gridfleet.exchange.channels import slugify


class Kind(IntEnum):
    """Asset kinds; the integer is what the numpy tables store."""

    LOAD = 0
    PV = 1
    STORAGE = 2


KIND_NAMES = {"load": Kind.LOAD, "pv": Kind.PV, "storage": Kind.STORAGE}
# Plain ints for hot loops: IntEnum attribute access costs ~1 us, a module global ~20 ns.
LOAD, PV, STORAGE = int(Kind.LOAD), int(Kind.PV), int(Kind.STORAGE)
MARKET_MAKER_TYPES = {"market_maker", "marketmaker", "mm"}


class GridError(ValueError):
    """A grid file or generator argument is wrong; the message names the path and the fix."""


@dataclass
class Market:
    """One market (an area with children). ``index`` is its row in :attr:`Grid.markets`."""

    index: int
    uuid: str
    name: str
    parent: int  # -1 for the root
    depth: int
    fee_const: float = 0.0  # ct/kWh
    fee_percent: float | None = None  # % of the market maker rate
    child_markets: list[int] = field(default_factory=list)
    assets: list[int] = field(default_factory=list)  # asset indices directly under this market
    has_market_maker: bool = False

    @property
    def slug(self) -> str:
        return slugify(self.name)


@dataclass
class Grid:
    """A flattened grid. Asset parameters are numpy arrays indexed by asset index."""

    markets: list[Market]
    asset_uuid: list[str]
    asset_name: list[str]
    kind: np.ndarray  # int8 Kind
    asset_market: np.ndarray  # int32 parent market index
    # Loads: average power (kW) on the daily curve, or a flat energy per slot (kWh) when >= 0.
    load_avg_kw: np.ndarray
    flat_energy_kwh: np.ndarray  # -1 when the asset follows its curve
    pv_capacity_kw: np.ndarray
    storage_capacity_kwh: np.ndarray
    storage_initial_soc: np.ndarray  # fraction 0..1
    storage_min_soc: np.ndarray  # fraction 0..1
    storage_max_power_kw: np.ndarray
    phase_h: np.ndarray  # per-asset shift of the daily curve in hours (variety between houses)
    market_maker_uuid: str
    market_maker_name: str = "Market Maker"
    market_maker_rate: float = 30.0
    feed_in_tariff_rate: float = 10.0
    settlement_markets: bool = False  # the file's ``settlement_markets: true``

    def __post_init__(self) -> None:
        self.kind_list: list[int] = self.kind.tolist()  # per-asset kind for Python loops

    @property
    def n_assets(self) -> int:
        return len(self.asset_uuid)

    @property
    def root(self) -> Market:
        return self.markets[0]

    def market_parent_array(self) -> np.ndarray:
        return np.array([m.parent for m in self.markets], dtype=np.int32)

    def market_depth_array(self) -> np.ndarray:
        return np.array([m.depth for m in self.markets], dtype=np.int32)

    def path_to_root(self, market: int) -> list[int]:
        """Market indices from ``market`` up to and including the root."""
        path = []
        while market >= 0:
            path.append(market)
            market = self.markets[market].parent
        return path

    def asset_index_by_uuid(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.asset_uuid)}

    def describe(self) -> str:
        counts = np.bincount(self.kind, minlength=3)
        return (
            f"{len(self.markets)} markets, {self.n_assets} assets "
            f"({counts[0]} loads, {counts[1]} PVs, {counts[2]} storages)"
        )


class _Builder:
    """Accumulates markets and assets while walking a tree, then freezes them into a Grid."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.markets: list[Market] = []
        self.rows: list[dict[str, Any]] = []
        self.mm_uuid: str | None = None
        self.mm_name = "Market Maker"
        self.names: set[str] = set()

    def new_uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def add_market(
        self, name: str, parent: int, fee_const: float = 0.0, fee_percent: float | None = None
    ) -> int:
        depth = 0 if parent < 0 else self.markets[parent].depth + 1
        m = Market(len(self.markets), self.new_uuid(), name, parent, depth, fee_const, fee_percent)
        self.markets.append(m)
        if parent >= 0:
            self.markets[parent].child_markets.append(m.index)
        return m.index

    def add_asset(self, market: int, name: str, kind: Kind, **params: float) -> int:
        index = len(self.rows)
        self.rows.append(
            {"uuid": self.new_uuid(), "name": name, "kind": kind, "market": market, **params}
        )
        self.markets[market].assets.append(index)
        return index

    def build(self, market_maker_rate: float, feed_in_tariff_rate: float) -> Grid:
        if not self.markets:
            raise GridError("grid: the grid needs at least one market")
        if feed_in_tariff_rate >= market_maker_rate:
            raise GridError(
                f"feed_in_tariff_rate ({feed_in_tariff_rate}) must be below market_maker_rate "
                f"({market_maker_rate}), or the Market Maker would trade with itself"
            )
        root = self.markets[0]
        root.has_market_maker = True
        n = len(self.rows)

        def col(key: str, default: float) -> np.ndarray:
            return np.array(
                [float(r.get(key, default)) for r in self.rows], dtype=np.float64
            ).reshape(n)

        return Grid(
            markets=self.markets,
            asset_uuid=[r["uuid"] for r in self.rows],
            asset_name=[r["name"] for r in self.rows],
            kind=np.array([int(r["kind"]) for r in self.rows], dtype=np.int8).reshape(n),
            asset_market=np.array([r["market"] for r in self.rows], dtype=np.int32).reshape(n),
            load_avg_kw=col("avg_power_kW", 0.0),
            flat_energy_kwh=col("energy_kWh", -1.0),
            pv_capacity_kw=col("capacity_kW", 0.0),
            storage_capacity_kwh=col("capacity_kWh", 0.0),
            storage_initial_soc=col("initial_soc", 50.0) / 100.0,
            storage_min_soc=col("min_soc", 10.0) / 100.0,
            storage_max_power_kw=col("max_power_kW", 0.0),
            phase_h=col("phase_h", 0.0),
            market_maker_uuid=self.mm_uuid or self.new_uuid(),
            market_maker_name=self.mm_name,
            market_maker_rate=float(market_maker_rate),
            feed_in_tariff_rate=float(feed_in_tariff_rate),
        )


# --------------------------------------------------------------------------- file loading

_ASSET_PARAMS: dict[Kind, dict[str, tuple[float, float]]] = {
    # name: (minimum allowed, maximum allowed)
    Kind.LOAD: {"avg_power_kW": (0, 1e6), "energy_kWh": (0, 1e6), "phase_h": (-24, 24)},
    Kind.PV: {"capacity_kW": (0, 1e6), "energy_kWh": (0, 1e6), "phase_h": (-24, 24)},
    Kind.STORAGE: {
        "capacity_kWh": (0, 1e6),
        "initial_soc": (0, 100),
        "min_soc": (0, 100),
        "max_power_kW": (0, 1e6),
    },
}


def _number(value: Any, path: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise GridError(f"{path}: expected a number, got {value!r}")
    if not low <= value <= high:
        raise GridError(f"{path}: {value} is outside [{low}, {high}]")
    return float(value)


def _walk(b: _Builder, node: Any, path: str, parent: int) -> None:
    if not isinstance(node, dict):
        raise GridError(f"{path}: expected a mapping with 'name', got {type(node).__name__}")
    name = node.get("name")
    if not isinstance(name, str) or not name.strip():
        raise GridError(f"{path}.name: every node needs a non-empty string name")
    # Duplicate names are allowed, as in gsy-e's own default community ("Load 81 L20" sits in
    # two buildings); registration by name then resolves to the first one.
    b.names.add(name)
    kind = str(node.get("type", "market" if "children" in node else "")).lower()
    if kind in MARKET_MAKER_TYPES:
        if parent != 0:
            raise GridError(f"{path}: the Market Maker must be a direct child of the root market")
        if b.mm_uuid is not None:
            raise GridError(f"{path}: only one Market Maker is allowed")
        b.mm_uuid, b.mm_name = b.new_uuid(), name
        return
    if kind in ("market", "area"):
        unknown = set(node) - {"name", "type", "children", "grid_fee_const", "grid_fee_percent"}
        if unknown:
            raise GridError(f"{path}: unknown key(s) {sorted(unknown)} on market {name!r}")
        fee = _number(node.get("grid_fee_const", 0.0), f"{path}.grid_fee_const", 0, 1e4)
        pct_raw = node.get("grid_fee_percent")
        pct = None if pct_raw is None else _number(pct_raw, f"{path}.grid_fee_percent", 0, 100)
        index = b.add_market(name, parent, fee, pct)
        children = node.get("children") or []
        if not isinstance(children, list):
            raise GridError(f"{path}.children: expected a list")
        for i, child in enumerate(children):
            _walk(b, child, f"{path}.children[{i}]", index)
        return
    if kind not in KIND_NAMES:
        raise GridError(
            f"{path}.type: unknown type {kind!r} for {name!r}; expected one of "
            "market, load, pv, storage, market_maker (a node with 'children' is a market)"
        )
    if parent < 0:
        raise GridError(f"{path}: the root must be a market, not a {kind}")
    k = KIND_NAMES[kind]
    allowed = _ASSET_PARAMS[k]
    params: dict[str, float] = {}
    for key, value in node.items():
        if key in ("name", "type"):
            continue
        if key not in allowed:
            raise GridError(
                f"{path}.{key}: unknown parameter for a {kind}; allowed: {sorted(allowed)}"
            )
        params[key] = _number(value, f"{path}.{key}", *allowed[key])
    if k is Kind.STORAGE:
        params.setdefault("capacity_kWh", 10.0)
        params.setdefault("max_power_kW", params["capacity_kWh"] / 2)
    if k is Kind.LOAD and "avg_power_kW" not in params and "energy_kWh" not in params:
        raise GridError(
            f"{path}: a load needs avg_power_kW (daily curve) or energy_kWh (flat per slot)"
        )
    if k is Kind.PV and "capacity_kW" not in params and "energy_kWh" not in params:
        raise GridError(
            f"{path}: a PV needs capacity_kW (solar curve) or energy_kWh (flat per slot)"
        )
    b.add_asset(parent, name, k, **params)


def grid_from_dict(data: Any, seed: int = 0, source: str = "grid") -> Grid:
    """Build a Grid from the parsed file structure; errors name the offending path."""
    if not isinstance(data, dict):
        raise GridError(f"{source}: expected a mapping at the top level")
    tree = data.get("grid", data)
    rates = {k: data.get(k) for k in ("market_maker_rate", "feed_in_tariff_rate")}
    b = _Builder(random.Random(seed))
    _walk(b, tree, "grid" if "grid" in data else source, -1)
    mmr = _number(
        rates["market_maker_rate"] if rates["market_maker_rate"] is not None else 30.0,
        "market_maker_rate",
        0,
        1e4,
    )
    fit = _number(
        rates["feed_in_tariff_rate"] if rates["feed_in_tariff_rate"] is not None else 10.0,
        "feed_in_tariff_rate",
        0,
        1e4,
    )
    settlement = data.get("settlement_markets", False)
    if not isinstance(settlement, bool):
        raise GridError(f"settlement_markets: expected true or false, got {settlement!r}")
    grid = b.build(mmr, fit)
    grid.settlement_markets = settlement
    return grid


def load_grid_file(path: str | Path, seed: int = 0) -> Grid:
    """Load a YAML (``.yaml``/``.yml``) or JSON grid file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise GridError(f"{p}: cannot read the grid file ({exc.strerror})") from exc
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise GridError(
            f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: {exc}"
        ) from exc
    return grid_from_dict(data, seed=seed, source=str(p))


# --------------------------------------------------------------------------- generator


def generate_grid(
    assets: int,
    communities: int | None = None,
    houses_size: int = 10,
    seed: int = 0,
    market_maker_rate: float = 30.0,
    feed_in_tariff_rate: float = 10.0,
    grid_fee_const: float = 1.0,
) -> Grid:
    """Grid > ``communities`` x Community > houses of ``houses_size`` assets; Market Maker leaf.

    Each house holds a load first, then a PV, then a storage, then loads and PVs alternating,
    so every house both buys and sells. Names follow the probe capture: ``House 3`` holds
    ``H3 Load20``, ``H3 PV21``... (the number is the global asset index). Parameters are drawn
    from ``seed``; the same arguments always give the same grid, uuids included.
    """
    if assets < 1:
        raise GridError("--assets: need at least 1 asset")
    if houses_size < 1:
        raise GridError("--houses-size: a house needs at least 1 asset")
    n_houses = math.ceil(assets / houses_size)
    if communities is None:
        communities = max(1, round(n_houses / 100))
    if communities < 1:
        raise GridError("--markets: need at least 1 community market")
    communities = min(communities, n_houses)
    rng = random.Random(seed)
    b = _Builder(rng)
    root = b.add_market("Grid", -1, grid_fee_const)
    comm = [
        b.add_market(
            "Community" if communities == 1 else f"Community {c + 1}", root, grid_fee_const
        )
        for c in range(communities)
    ]
    cycle = (Kind.LOAD, Kind.PV, Kind.STORAGE, Kind.LOAD, Kind.PV)
    a = 0
    for h in range(n_houses):
        house = b.add_market(f"House {h + 1}", comm[h * communities // n_houses], 0.0)
        phase = rng.uniform(-1.5, 1.5)
        for j in range(min(houses_size, assets - a)):
            kind = cycle[j % len(cycle)]
            label = {Kind.LOAD: "Load", Kind.PV: "PV", Kind.STORAGE: "Storage"}[kind]
            name = f"H{h + 1} {label}{a}"
            if kind is Kind.LOAD:
                b.add_asset(house, name, kind, avg_power_kW=rng.uniform(0.2, 1.2), phase_h=phase)
            elif kind is Kind.PV:
                b.add_asset(house, name, kind, capacity_kW=rng.choice((3.0, 4.0, 5.0, 8.0, 10.0)))
            else:
                cap = rng.choice((5.0, 10.0, 13.5))
                b.add_asset(
                    house,
                    name,
                    kind,
                    capacity_kWh=cap,
                    initial_soc=rng.uniform(20, 80),
                    min_soc=10.0,
                    max_power_kW=cap / 2,
                )
            a += 1
    return b.build(market_maker_rate, feed_in_tariff_rate)


def assign_aggregators(
    grid: Grid, aggregators: int, prefix: str = "agg-"
) -> dict[str, dict[str, list[str]]]:
    """Split the grid between ``aggregators`` names, whole houses at a time.

    Returns ``{"agg-000": {"assets": [...], "asset_uuids": [...], "markets": [...],
    "market_uuids": [...]}}``. Assets go with their market (house), contiguous runs of markets
    per aggregator so each aggregator's pruned tree stays small. Each aggregator also operates
    (grid-operator role) the leaf markets of its assets; the upper markets (communities, the
    root) go to the aggregator that holds their first house.
    """
    if aggregators < 1:
        raise GridError("--aggregators: need at least 1 aggregator")
    leaf_markets = [m for m in grid.markets if m.assets]
    if aggregators > len(leaf_markets):
        raise GridError(
            f"--aggregators {aggregators}: the grid has only {len(leaf_markets)} markets with assets; "
            "use fewer aggregators or a smaller --houses-size"
        )
    width = len(str(aggregators - 1))
    names = [f"{prefix}{i:0{max(3, width)}d}" for i in range(aggregators)]
    out: dict[str, dict[str, list[str]]] = {
        n: {"assets": [], "asset_uuids": [], "markets": [], "market_uuids": []} for n in names
    }
    owner_of_market: dict[int, str] = {}
    for i, m in enumerate(leaf_markets):
        agg = names[i * aggregators // len(leaf_markets)]
        owner_of_market[m.index] = agg
        entry = out[agg]
        entry["markets"].append(m.name)
        entry["market_uuids"].append(m.uuid)
        for a in m.assets:
            entry["assets"].append(grid.asset_name[a])
            entry["asset_uuids"].append(grid.asset_uuid[a])
    # Upper markets (no assets of their own): owned by whoever owns their first leaf market.
    for m in grid.markets:
        if m.index in owner_of_market:
            continue
        first = m
        while not first.assets and first.child_markets:
            first = grid.markets[first.child_markets[0]]
        agg = owner_of_market.get(first.index, names[0])
        out[agg]["markets"].append(m.name)
        out[agg]["market_uuids"].append(m.uuid)
    return out
