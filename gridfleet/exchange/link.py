"""The one interface between gridfleet's fleet services and an exchange, whatever the transport.

Ingress, coordinator and the one-process loop hold an :class:`ExchangeLink` and nothing else of
the wire's plumbing: they bring a fleet up, receive every aggregator's events, send one batch per
aggregator and read the exchange's answers. :func:`open_link` picks the transport from the
target; it is the only place that imports one.

Events and answers reach the owner as ``(aggregator uuid, raw message, monotonic receive time)``
on a transport thread: the handler must be cheap (put the bytes on a queue) because a transport
that stalls its reader loses messages (Redis drops a slow pub/sub subscriber).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, runtime_checkable
from uuid import UUID, uuid4, uuid5

from pydantic import SecretStr

RawHandler = Callable[[str, bytes, float], None]
"""``(aggregator uuid, raw message, monotonic receive time)``; must return quickly."""

ReconnectHandler = Callable[[str], None]
"""Called with the reader's name each time a transport connection came back."""

UndeliveredHandler = Callable[[str, str], None]
"""``(aggregator uuid, transaction id)`` of a batch the exchange never took (REST: no 2xx
within its retry budget); called on a thread of its own, so it may do I/O."""


_IDENTITY_NAMESPACE = UUID("6a0d2c3e-51f4-4e0b-9a55-9d1f8e6c2b7a")


def aggregator_identity(fleet_id: str, name: str) -> str:
    """The uuid of aggregator ``name`` of fleet ``fleet_id``: the same in every run and process,
    so a restarted ingress or a rerun finds the aggregators (and selections) it made before."""
    return str(uuid5(_IDENTITY_NAMESPACE, f"{fleet_id}\x00{name}"))


def new_transaction_id() -> str:
    """A fresh transaction id: the exchange echoes it in its answer."""
    return str(uuid4())


class ExchangeError(RuntimeError):
    """The exchange answered with an error, or did not answer in time."""


class ExchangeUnreachable(ExchangeError):
    """The exchange could not be reached, or refused our credentials: nothing can run."""


@dataclass(frozen=True)
class RestTarget:
    """A hosted exchange (collaboration or Canary Network) over REST + websocket.

    Credentials are :class:`~pydantic.SecretStr`: they never show in a repr, a log line or an
    error message; ``username_env`` / ``password_env`` name the variables they came from, so an
    error can say where to look.
    """

    domain: str  # https://host, no trailing slash
    websocket: str  # wss://host/external-ws
    simulation_id: str
    username: SecretStr
    password: SecretStr
    username_env: str = "API_CLIENT_USERNAME"
    password_env: str = "API_CLIENT_PASSWORD"
    request_timeout_s: float = 10.0  # every HTTP request, token and handshake
    retry_budget_s: float = 30.0  # retries of one request stop after this long ...
    max_retries: int = 5  # ... or this many attempts more
    batch_retry_budget_s: float = 2.0  # a batch is worth retrying only within its tick
    token_lifetime_s: float = 3600.0  # when the token carries no `exp`
    select_concurrency: int = 50  # select-aggregator/ requests in flight
    max_message_bytes: int = 256 * 1024 * 1024  # a 100 000-asset tree is ~30 MB
    # forecasts and measurements: in the batch, or each asset's endpoints ("live": measurements
    # as a Canary Network's set-live-generation/); see gridfleet.exchange.rest_energy
    energy_data: str = "batch"


ExchangeTarget: TypeAlias = str | RestTarget
"""What :func:`open_link` connects to: a Redis URL, or a hosted exchange's REST target."""


@dataclass(frozen=True)
class ExchangeCatalog:
    """What an exchange says the user may trade: asset and market names (registry order), the
    asset kinds it knows (``load``, ``pv``, ``storage``, ``smart_meter``) and the name -> uuid
    maps it learnt on the way."""

    assets: list[str]
    markets: list[str]
    kinds: dict[str, str] = field(default_factory=dict)
    asset_uuid: dict[str, str] = field(default_factory=dict)
    market_uuid: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregatorRequest:
    """One aggregator of a fleet as the exchange must see it: its name and what it trades."""

    name: str
    assets: Sequence[str] = ()
    markets: Sequence[str] = ()


@dataclass
class SelectionReport:
    """What a SELECT (or UNSELECT) of many devices achieved."""

    selected: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # device uuid -> exchange's message


@dataclass
class BroughtUp:
    """A fleet on the exchange: the uuids it learnt, and what could not be had, with reasons."""

    aggregator_uuid: dict[str, str]  # aggregator name -> uuid
    asset_uuid: dict[str, str]  # asset name -> uuid (registered)
    market_uuid: dict[str, str]  # market name -> uuid (registered)
    selection_errors: dict[str, str] = field(default_factory=dict)  # device uuid -> reason
    unregistered: dict[str, str] = field(default_factory=dict)  # asset/market name -> reason
    reused: list[str] = field(default_factory=list)  # aggregators found from an earlier run

    def failures(self) -> dict[str, str]:
        """Every asset or market of the fleet that is not selected, by name, with the reason."""
        names = {u: n for n, u in (*self.asset_uuid.items(), *self.market_uuid.items())}
        out = dict(self.unregistered)
        out.update({names.get(u, u): why for u, why in self.selection_errors.items()})
        return out


@dataclass(frozen=True)
class OutgoingBatch:
    """One aggregator's batch, its commands already serialized as ``{asset uuid: [command]}``."""

    aggregator_uuid: str
    transaction_id: str
    commands_json: bytes

    @property
    def empty(self) -> bool:
        """No command at all (``{}``): the aggregator has nothing to say this round."""
        return self.commands_json.strip() in (b"{}", b"")


class ExchangeLink(Protocol):
    """An aggregator-side connection to an exchange (gsy-e, or gridfleet's embedded one)."""

    def bring_up(
        self,
        aggregators: Sequence[AggregatorRequest],
        timeout: float = 60.0,
        *,
        fleet_id: str = "",
    ) -> BroughtUp:
        """Create (or find) the aggregators, learn every asset's and market's uuid, select them.

        ``fleet_id`` makes the aggregators' identity stable: the same fleet id and name are the
        same aggregator in every run. Nothing is raised for what could not be selected: it is
        in the result, with the exchange's reason.
        """
        ...

    def subscribe_events(self, aggregator_uuids: Iterable[str], handler: RawHandler) -> None:
        """Receive every market, tick, trade and finish event of these aggregators."""
        ...

    def subscribe_answers(self, aggregator_uuids: Iterable[str], handler: RawHandler) -> None:
        """Receive the exchange's answers to these aggregators' batches."""
        ...

    def send_batches(self, batches: Iterable[OutgoingBatch]) -> int:
        """Send ready batches, as one burst where the transport allows; returns how many went.

        An :attr:`~OutgoingBatch.empty` batch is never sent (gsy-e does not answer a batch
        without commands); it is not counted in the result. The exchange's deadline report
        counts such a round as ``idle`` when the aggregator had nothing it could trade.
        """
        ...

    def warm_up(self) -> None:
        """Open now what the first :meth:`send_batches` would open (the first round with
        trees must not pay for a connection)."""
        ...

    @property
    def reconnects(self) -> int:
        """How often a connection of this link was lost and came back."""
        ...

    def close(self) -> None:
        """Stop every reader and close every connection."""
        ...


@runtime_checkable
class CatalogSource(Protocol):
    """A link that can list what the exchange offers (REST: the configuration registry), so a
    fleet's globs and ``["*"]`` resolve without a ``grid_file``. Redis has no such listing."""

    def catalog(self, timeout: float = 60.0) -> ExchangeCatalog:
        """The registered assets and markets of this user on the exchange."""
        ...


def link_catalog(link: ExchangeLink, timeout: float = 60.0) -> ExchangeCatalog | None:
    """The exchange's catalogue through ``link``, or None when its transport has none."""
    return link.catalog(timeout) if isinstance(link, CatalogSource) else None


def has_catalog(target: ExchangeTarget) -> bool:
    """Whether the link for ``target`` lists the exchange's assets (so globs need no grid file)."""
    return isinstance(target, RestTarget)


def answers_on_event_sockets(target: ExchangeTarget) -> bool:
    """Whether batch answers arrive on the connection that carries the aggregator's events.

    REST: the exchange answers on the aggregator's one websocket (rest.md 4.3), which the
    ingress holds; a second socket per aggregator for the coordinator would receive every tree
    again (and whether a hosted exchange allows two is unknown, rest.md 8.5), so the ingress
    records the answers. Redis: answers have a channel of their own, read by the coordinator.
    """
    return isinstance(target, RestTarget)


def check_target(target: ExchangeTarget) -> None:
    """For a REST target, log in once: raises :class:`ExchangeUnreachable` naming the domain
    (never the password) when the exchange is down or refuses the credentials."""
    if isinstance(target, RestTarget):
        from gridfleet.exchange.rest_auth import check_credentials

        check_credentials(target)


def describe_target(target: ExchangeTarget) -> str:
    """The target fit for a log line: a REST domain and simulation, or the Redis URL's scheme
    and host (never a password)."""
    if isinstance(target, RestTarget):
        return f"{target.domain} (simulation {target.simulation_id})"
    from urllib.parse import urlsplit

    parts = urlsplit(target)
    host = parts.hostname or parts.path
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def open_link(
    url: ExchangeTarget,
    *,
    config_id: str = "",
    on_reconnect: ReconnectHandler | None = None,
    on_undelivered: UndeliveredHandler | None = None,
) -> ExchangeLink:
    """The link for an exchange target: a ``redis://`` / ``rediss://`` / ``unix://`` URL, or a
    :class:`RestTarget` (REST + websocket). ``on_undelivered`` hears of every batch the exchange
    did not take (REST only: a Redis publish is fire-and-forget, its losses show as gaps)."""
    if isinstance(url, RestTarget):
        from gridfleet.exchange.rest import RestLink

        return RestLink(url, on_reconnect=on_reconnect, on_undelivered=on_undelivered)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        from gridfleet.exchange.redis_pubsub import RedisPubSubLink

        return RedisPubSubLink(url, config_id=config_id, on_reconnect=on_reconnect)
    raise ValueError(f"no exchange transport for {scheme or url!r}: expected a redis:// URL")
