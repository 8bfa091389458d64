"""The fleet file: which aggregators run, what they control, with which strategies.

```yaml
exchange:
  url: redis://127.0.0.1:6379/0      # or url_env: GRIDFLEET_EXCHANGE_URL (default)
  # or a hosted collaboration / Canary Network over REST + websocket:
  # rest: {domain: https://host, websocket: wss://host/external-ws, simulation_id: <uuid>,
  #        username_env: API_CLIENT_USERNAME, password_env: API_CLIENT_PASSWORD}
  # simulation_config: collab.json     # the Registry page's file fills domain, websocket, id
broker:
  url_env: GRIDFLEET_BROKER_URL        # Celery broker + shard state; may be the same Redis
grid_file: grid-assets.json            # names the exchange knows (for globs and "all")
aggregators:
  - name: north
    assets: ["House 1 *", "PV 3"]      # names or shell globs; ["*"] = every known asset
    markets: ["Community"]             # grid-operator role, by name or glob
    strategy: {name: linear_ramp}      # default for this aggregator's assets
    by_kind: {storage: {name: fixed_rate, params: {rate: 20}}}
    by_asset: {"PV 3": {name: fixed_rate, params: {rate: 12}}}
    market_strategy: {name: grid_fee_tou, params: {tou_file: ToU.csv}}
shard_size: 2000
tick_budget_s: null                    # null: derived from the observed tick interval
```

Every error names the path of the bad field (``aggregators.0.by_kind.storage.name: ...``).
Secrets stay out of the file: give ``url_env`` and put the URL (with its password) in the
environment.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gridfleet.exchange.link import ExchangeTarget, RestTarget

AssetKindName = Literal["load", "pv", "storage", "smart_meter"]

DEFAULT_NAMESPACE = "gf"
"""The prefix of every Redis key gridfleet writes when the fleet file names none."""


class ConfigError(ValueError):
    """The fleet file is wrong; the message names the file and the bad field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisEndpoint(_Model):
    """A Redis URL given directly, or (better for secrets) through an environment variable."""

    url: str | None = None
    url_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> RedisEndpoint:
        _check_redis_source(self.url, self.url_env)
        return self

    def resolve(self, override: str | None = None) -> str:
        """The URL to connect to: an explicit override, then ``url``, then ``$url_env``."""
        if override:
            return override
        if self.url:
            return self.url
        assert self.url_env is not None
        return read_url_env(self.url_env)


class LedgerEndpoint(_Model):
    """The ledger's database URL (``sqlite:///PATH``, ``postgresql://...``), given directly or
    (better for a password) through an environment variable."""

    url: str | None = None
    url_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LedgerEndpoint:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give `url` or `url_env`")
        if self.url is not None and not self.url.startswith(("sqlite:", "postgresql")):
            raise ValueError(f"url must start with sqlite: or postgresql, got {self.url!r}")
        return self

    def resolve(self) -> str:
        if self.url:
            return self.url
        assert self.url_env is not None
        return read_url_env(self.url_env)


DEFAULT_USERNAME_ENV = "API_CLIENT_USERNAME"
DEFAULT_PASSWORD_ENV = "API_CLIENT_PASSWORD"
"""The official client's variables (gsy-e-sdk), so an SDK user's environment works as it is."""

CREDENTIAL_KEYS = frozenset({"username", "password", "token", "access"})


def _http_url(value: str, what: str, schemes: tuple[str, ...]) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(tuple(f"{s}://" for s in schemes)):
        raise ValueError(
            f"{what} must start with {' or '.join(s + '://' for s in schemes)}, got {value!r}"
        )
    if "@" in value.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError(f"{what} must not carry credentials: use username_env / password_env")
    return value


class RestExchange(_Model):
    """A hosted exchange over REST + websocket; credentials come from the environment only."""

    domain: str | None = None
    websocket: str | None = None
    simulation_id: str | None = Field(default=None, min_length=1)
    username_env: str = Field(default=DEFAULT_USERNAME_ENV, min_length=1)
    password_env: str = Field(default=DEFAULT_PASSWORD_ENV, min_length=1)
    request_timeout_s: float = Field(default=10.0, gt=0, le=300)
    token_lifetime_s: float = Field(default=3600.0, gt=0)
    select_concurrency: int = Field(default=50, ge=1, le=1000)
    batch_retry_budget_s: float = Field(default=2.0, ge=0, le=60)
    energy_data: Literal["batch", "endpoints", "live"] = Field(
        default="batch",
        description="how forecasts and measurements travel: in the batch (as over Redis), or"
        " each asset's own endpoints (set-energy-forecast/, set-energy-measurement/); 'live'"
        " sends measurements as a Canary Network's set-live-generation/",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict) and (found := sorted(CREDENTIAL_KEYS & set(data))):
            raise ValueError(
                f"{', '.join(found)} must not be in the fleet file: put the credentials in the"
                " environment and name the variables with username_env / password_env"
            )
        return data

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v, "domain", ("https", "http"))

    @field_validator("websocket")
    @classmethod
    def _websocket(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v, "websocket", ("wss", "ws"))


class ExchangeEndpoint(RedisEndpoint):
    """The exchange: a Redis URL (``url`` / ``url_env``), or a hosted one over REST (``rest``,
    ``simulation_config``, or both: the explicit ``rest`` keys win over the file's)."""

    rest: RestExchange | None = None
    simulation_config: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ExchangeEndpoint:
        is_rest = self.rest is not None or self.simulation_config is not None
        if is_rest and (self.url is not None or self.url_env is not None):
            raise ValueError(
                "give either `url`/`url_env` (Redis) or `rest`/`simulation_config`, not both"
            )
        if not is_rest:
            _check_redis_source(self.url, self.url_env)
        return self

    @property
    def is_rest(self) -> bool:
        return self.rest is not None or self.simulation_config is not None

    def resolve(self, override: str | None = None) -> str:
        """The Redis URL (an override wins); a REST exchange has none."""
        if not override and self.is_rest:
            raise ConfigError("the fleet file's exchange is a REST one, not a Redis URL")
        return super().resolve(override)

    def target(self, override: str | None = None) -> ExchangeTarget:
        """What to connect to: an explicit Redis URL wins, then the fleet file's form.

        For REST the domain, websocket and simulation id come from ``rest`` or the simulation
        config file, the credentials from the variables ``rest`` names (defaults: the official
        client's ``API_CLIENT_USERNAME`` / ``API_CLIENT_PASSWORD``).
        """
        if override or not self.is_rest:
            return self.resolve(override)
        rest = self.rest or RestExchange()
        filled = read_simulation_config(self.simulation_config) if self.simulation_config else {}
        values = {}
        for key, hint in (
            ("domain", "the HTTP base URL, e.g. https://gsyweb.gridsingularity.com"),
            (
                "websocket",
                "the websocket base URL, e.g. wss://gsyweb.gridsingularity.com/external-ws",
            ),
            ("simulation_id", "the collaboration's or Canary Network's uuid"),
        ):
            value = getattr(rest, key) or filled.get(key)
            if not value:
                theirs = SIMULATION_CONFIG_FIELDS[key][0]
                source = (
                    f"neither exchange.rest.{key} nor `{theirs}` in {self.simulation_config}"
                    if self.simulation_config
                    else f"exchange.rest.{key} is not given"
                )
                raise ConfigError(f"exchange: no {key} ({hint}): {source}")
            values[key] = value
        return RestTarget(
            domain=values["domain"],
            websocket=values["websocket"],
            simulation_id=values["simulation_id"],
            username=SecretStr(_credential(rest.username_env, "the exchange user's name (e-mail)")),
            password=SecretStr(_credential(rest.password_env, "the exchange user's password")),
            username_env=rest.username_env,
            password_env=rest.password_env,
            request_timeout_s=rest.request_timeout_s,
            token_lifetime_s=rest.token_lifetime_s,
            select_concurrency=rest.select_concurrency,
            batch_retry_budget_s=rest.batch_retry_budget_s,
            energy_data=rest.energy_data,
        )


def _credential(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set (it should hold {what})")
    return value


SIMULATION_CONFIG_FIELDS = {
    "domain": ("domain_name", ("https", "http")),
    "websocket": ("web_socket_domain_name", ("wss", "ws")),
    "simulation_id": ("uuid", ()),
}
"""Our key -> (the Registry page file's key, allowed URL schemes)."""


def read_simulation_config(path: Path) -> dict[str, str]:
    """The domain, websocket and simulation id in a simulation config file (rest.md 1.4).

    Only the fields it has: a missing one is an error only if the fleet file does not give it
    either (:meth:`ExchangeEndpoint.target` says which). The file's ``username`` is not used
    (the official client ignores it too), nor its ``registry`` (the link reads the live one). A field that is there but wrong (not a string, a URL without its scheme) is an error
    naming the file and the field.
    """
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"exchange.simulation_config: cannot read {path}: {exc.strerror}"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"exchange.simulation_config: {path} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"exchange.simulation_config: {path} must hold a JSON object")
    out: dict[str, str] = {}
    for ours, (theirs, schemes) in SIMULATION_CONFIG_FIELDS.items():
        value = data.get(theirs)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"exchange.simulation_config: {path}: `{theirs}` must be a non-empty string"
            )
        if schemes:
            try:
                value = _http_url(value, f"`{theirs}`", schemes)
            except ValueError as exc:
                raise ConfigError(f"exchange.simulation_config: {path}: {exc}") from None
        out[ours] = value.strip()
    return out


def _check_redis_source(url: str | None, url_env: str | None) -> None:
    if url is None and url_env is None:
        raise ValueError("give `url` or `url_env`")
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"url must start with redis://, rediss:// or unix://, got {url!r}")


def read_url_env(name: str) -> str:
    """The URL in the environment variable the fleet file's ``url_env`` names.

    The one place gridfleet reads a variable by a name the user chose (the default names,
    ``GRIDFLEET_EXCHANGE_URL`` and ``GRIDFLEET_BROKER_URL``, are also :mod:`gridfleet.settings`
    fields, which feed ``--exchange-url`` / ``--broker-url`` and win over the fleet file).
    """
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set (it should hold a redis:// URL)")
    return value


class StrategySpec(_Model):
    """A strategy by registered name or dotted path, with its parameters."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    def key(self) -> str:
        """A stable identity for this spec (same name and params -> same key)."""
        return orjson.dumps(
            {"name": self.name, "params": self.params}, option=orjson.OPT_SORT_KEYS
        ).decode()


class AggregatorSpec(_Model):
    name: str = Field(min_length=1)
    assets: list[str] = Field(default_factory=list)
    markets: list[str] = Field(default_factory=list)
    strategy: StrategySpec = StrategySpec(name="linear_ramp")
    by_kind: dict[AssetKindName, StrategySpec] = Field(default_factory=dict)
    by_asset: dict[str, StrategySpec] = Field(default_factory=dict)
    market_strategy: StrategySpec | None = None

    @model_validator(mode="after")
    def _controls_something(self) -> AggregatorSpec:
        if not self.assets and not self.markets:
            raise ValueError("an aggregator needs `assets` or `markets`")
        if self.markets and self.market_strategy is None:
            raise ValueError("`markets` needs a `market_strategy`")
        return self

    def strategy_for(self, asset_name: str, kind: AssetKindName | None) -> StrategySpec:
        if asset_name in self.by_asset:
            return self.by_asset[asset_name]
        if kind is not None and kind in self.by_kind:
            return self.by_kind[kind]
        return self.strategy


class FleetConfig(_Model):
    exchange: ExchangeEndpoint = ExchangeEndpoint(url_env="GRIDFLEET_EXCHANGE_URL")
    exchange_config_id: str = ""
    broker: RedisEndpoint = RedisEndpoint(url_env="GRIDFLEET_BROKER_URL")
    ledger: LedgerEndpoint | None = None  # unset: GRIDFLEET_LEDGER_URL, else runs/ledger.sqlite
    grid_file: Path | None = None
    aggregators: list[AggregatorSpec] = Field(min_length=1)
    shard_size: int = Field(default=2000, ge=1, le=1_000_000)
    tick_budget_s: float | None = Field(default=None, gt=0)
    hedge_margin_s: float = Field(default=0.15, ge=0)
    # Long enough that a busy reader's pause is not taken for the end of a 1 000-event round
    # (at 100 000 assets 0.05 s split most rounds in two or three); full shards stream out
    # meanwhile, so waiting costs only the round's tail.
    coalesce_window_s: float = Field(default=0.15, ge=0, le=1)
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=r"^[A-Za-z0-9_.-]+$")
    flower_events: bool = False
    accepts_requirements: bool = False  # the exchange takes degrees of freedom on bids
    state_ttl_s: int = Field(default=86_400, ge=60)
    # What to do when assets or markets of the fleet cannot be selected at start-up (not
    # registered at the exchange, or held by another aggregator): go on without them (named in
    # the log with the exchange's reason), or stop before trading.
    on_unselected: Literal["continue", "stop"] = "continue"
    bring_up_timeout_s: float = Field(default=60.0, gt=0)  # each bulk step waits this long

    @field_validator("aggregators")
    @classmethod
    def _unique_names(cls, v: list[AggregatorSpec]) -> list[AggregatorSpec]:
        names = [a.name for a in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"aggregator names must be unique; repeated: {dupes}")
        return v


def _format_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the fleet file"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<fleet>") -> FleetConfig:
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def load_config(path: str | Path) -> FleetConfig:
    """Read and validate a YAML (or JSON) fleet file. Relative paths inside are resolved from it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read fleet file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the fleet file must be a mapping at the top level")
    _resolve_data_paths(data, path.parent.resolve())
    config = parse_config(data, str(path))
    if config.grid_file is not None and not config.grid_file.is_absolute():
        config = config.model_copy(update={"grid_file": (path.parent / config.grid_file).resolve()})
    sim_config = config.exchange.simulation_config
    if sim_config is not None and not sim_config.is_absolute():
        exchange = config.exchange.model_copy(
            update={"simulation_config": (path.parent / sim_config).resolve()}
        )
        config = config.model_copy(update={"exchange": exchange})
    return config


def fleet_namespace(path: str | Path | None) -> str:
    """The namespace of the fleet file at ``path``; :data:`DEFAULT_NAMESPACE` without one."""
    return load_config(path).namespace if path else DEFAULT_NAMESPACE


PATH_PARAMS = ("path", "profile_dir")
"""Strategy parameters that name data files; relative ones are taken from the fleet file's folder."""


def _resolve_data_paths(data: dict[str, Any], base: Path) -> None:
    def fix(spec: Any) -> None:
        if not isinstance(spec, dict) or not isinstance(spec.get("params"), dict):
            return
        params = spec["params"]
        for key in PATH_PARAMS:
            if isinstance(params.get(key), str) and not Path(params[key]).is_absolute():
                params[key] = str(base / params[key])
        if isinstance(params.get("profiles"), dict):
            params["profiles"] = {
                k: str(base / v) if isinstance(v, str) and not Path(v).is_absolute() else v
                for k, v in params["profiles"].items()
            }
        for child in (
            params.get("strategies", []) if isinstance(params.get("strategies"), list) else []
        ):
            fix(child)

    for agg in data.get("aggregators") or []:
        if not isinstance(agg, dict):
            continue
        for key in ("strategy", "market_strategy"):
            fix(agg.get(key))
        for key in ("by_kind", "by_asset"):
            if isinstance(agg.get(key), dict):
                for spec in agg[key].values():
                    fix(spec)


# ---------------------------------------------------------------------------------------------
# Resolving names and globs against what the exchange knows


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def resolve_names(
    patterns: list[str],
    known: list[str] | None,
    what: str,
    owner: str,
    source: str = "the grid file",
) -> list[str]:
    """Expand names and globs against ``known`` names, keeping ``known``'s order.

    Plain names need no list of known names; globs do (``grid_file`` in the fleet file, or the
    registry of a REST exchange: ``source`` names which in errors). Against a registry a plain
    name it lacks is kept: the bring-up reports it with the exchange's reason.
    """
    out: list[str] = []
    seen: set[str] = set()
    lenient = source != "the grid file"
    for pattern in patterns:
        if not _is_glob(pattern):
            if known is not None and not lenient and pattern not in set(known):
                raise ConfigError(f"aggregator {owner!r}: {what} {pattern!r} is not in {source}")
            matches = [pattern]
        else:
            if known is None:
                raise ConfigError(
                    f"aggregator {owner!r}: the glob {pattern!r} needs `grid_file` to list the {what}s"
                )
            matches = fnmatch.filter(known, pattern)
            if not matches:
                raise ConfigError(
                    f"aggregator {owner!r}: the glob {pattern!r} matches no {what} in {source}"
                )
        for name in matches:
            if name not in seen:
                seen.add(name)
                out.append(name)
    return out


class GridCatalog(_Model):
    """Names of the assets and markets an exchange has, and (optionally) a suggested owner."""

    assets: list[str]
    markets: list[str] = Field(default_factory=list)
    kinds: dict[str, AssetKindName] = Field(default_factory=dict)


def load_catalog(path: Path) -> GridCatalog:
    """Read the asset and market names from a grid file.

    Accepts gridfleet's own catalog (``{"assets": [...], "markets": [...], "kinds": {...}}``),
    the assignment ``gridfleet sim --fleet-out`` writes (``{aggregator: {"assets": [...]}}``), and
    the simulation configuration a user downloads from the exchange (a ``registry`` tree).
    """
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read grid file {path}: {exc}") from None
    if isinstance(data, dict) and "registry" in data:
        assets: list[str] = []
        markets: list[str] = []
        kinds: dict[str, AssetKindName] = {}
        type_to_kind: dict[str, AssetKindName] = {
            "Load": "load",
            "PV": "pv",
            "Storage": "storage",
            "SmartMeter": "smart_meter",
        }

        def walk(node: dict[str, Any]) -> None:
            if node.get("children") is not None or node.get("type") == "Area":
                markets.append(node["name"])
                for child in node.get("children") or []:
                    walk(child)
            elif node.get("type") in type_to_kind:
                assets.append(node["name"])
                kinds[node["name"]] = type_to_kind[node["type"]]

        walk(data["registry"])
        return GridCatalog(assets=assets, markets=markets, kinds=kinds)
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(v, dict) and "assets" in v for v in data.values())
    ):
        # `gridfleet sim --fleet-out`: {aggregator: {"assets": [...], "markets": [...], ...}}
        return GridCatalog(
            assets=[a for v in data.values() for a in v["assets"]],
            markets=[m for v in data.values() for m in v.get("markets", [])],
        )
    try:
        return GridCatalog.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(str(path), exc)) from None
