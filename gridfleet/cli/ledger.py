"""``gridfleet ledger``, ``gridfleet runs`` and ``gridfleet export``: the ledger's commands."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from gridfleet.cli import (
    BadInput,
    Unreachable,
    _load_config,
    _stop_on_signals,
    broker_option,
    check_redis,
    config_option,
    from_settings,
    log_option,
)

ledger_option = click.option(
    "--ledger-url",
    "ledger_db",
    default=from_settings("ledger_url"),
    help="The ledger's database: sqlite:///PATH or postgresql://... (default: the fleet file's "
    "ledger, else sqlite:///runs/ledger.sqlite). [env: GRIDFLEET_LEDGER_URL]",
)


def ledger_url(url: str | None, config_path: str | None) -> str:
    """The flag (or GRIDFLEET_LEDGER_URL), then the fleet file's ``ledger``, then SQLite."""
    from gridfleet.config import ConfigError
    from gridfleet.ledger.store import DEFAULT_LEDGER_URL

    if url:
        return url
    if config_path:
        config = _load_config(config_path)
        if config.ledger is not None:
            try:
                return config.ledger.resolve()
            except ConfigError as exc:
                raise BadInput(str(exc)) from None
    return DEFAULT_LEDGER_URL


def open_engine(url: str) -> Any:
    from gridfleet.ledger.store import LedgerError, open_ledger

    try:
        return open_ledger(url)
    except LedgerError as exc:
        raise Unreachable(str(exc)) from None


def open_run(run_id: str, ledger_db: str | None, config_path: str | None) -> Any:
    """The ledger's engine, once it is known to hold run ``run_id`` (else exit 2)."""
    from gridfleet.ledger.store import run_exists

    engine = open_engine(ledger_url(ledger_db, config_path))
    if not run_exists(engine, run_id):
        raise BadInput(f"no run {run_id!r} in the ledger; `gridfleet runs` lists them")
    return engine


@click.command()
@config_option
@broker_option
@ledger_option
@log_option
@click.option("--run-id", default=None, help="Write this run only, then exit.")
@click.option(
    "--stats-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="At the end, write the writer's totals and lag percentiles here (JSON).",
)
@click.option(
    "--namespace",
    default=None,
    help="The fleet's namespace on the broker (default: the fleet file's, else gf).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Serve the writer's Prometheus /metrics and /healthz on this port (0: off; 9100 in "
    "deploy/k8s).",
)
@click.option(
    "--consumer",
    default=None,
    help="This writer's name in the broker's consumer group (default: ledger@HOSTNAME). Give a "
    "fixed one where the host name changes on every restart (a Kubernetes pod): the next "
    "writer then takes over its pending entries at once, not after 30 s.",
)
def ledger(
    config_path: str | None,
    broker_url: str | None,
    ledger_db: str | None,
    log_level: str,
    run_id: str | None,
    stats_file: Path | None,
    namespace: str | None,
    metrics_port: int,
    consumer: str | None,
) -> None:
    """Copy the fleet's runs from the broker into the ledger, as they happen."""
    import redis

    from gridfleet.config import ConfigError
    from gridfleet.ledger.writer import LedgerWriter
    from gridfleet.platform.keys import Keys
    from gridfleet.runtime.logs import setup_logging

    setup_logging(log_level)
    config = _load_config(config_path) if config_path else None
    if broker_url is None and config is not None:
        try:
            broker_url = config.broker.resolve()
        except ConfigError as exc:
            raise BadInput(f"{exc}; or pass --broker-url") from None
    if broker_url is None:
        raise BadInput("no broker: pass --broker-url, set GRIDFLEET_BROKER_URL or give -c FLEET")
    check_redis(broker_url, "--broker-url (or GRIDFLEET_BROKER_URL)")
    engine = open_engine(ledger_url(ledger_db, config_path))
    ns = namespace or (config.namespace if config is not None else "gf")
    stop = threading.Event()
    _stop_on_signals(stop)
    if consumer is not None and not consumer.strip():
        raise BadInput("--consumer: give a name (or leave the option out)")
    writer = LedgerWriter(
        redis.Redis.from_url(broker_url),
        engine,
        Keys(ns),
        consumer=consumer,
        stop=stop,
        run_id=run_id,
    )
    if metrics_port:
        from gridfleet.ledger.metrics import serve

        try:
            serve(writer, metrics_port)
        except OSError as exc:
            raise BadInput(
                f"--metrics-port {metrics_port}: cannot listen on it ({exc.strerror or exc})"
            ) from None
    try:
        writer.run()
    finally:
        if stats_file is not None:
            import orjson

            stats_file.write_bytes(orjson.dumps(writer.stats.as_dict(), option=orjson.OPT_INDENT_2))


@click.command()
@config_option
@ledger_option
def runs(config_path: str | None, ledger_db: str | None) -> None:
    """List the runs in the ledger, newest first: its id, then what it did."""
    from datetime import UTC, datetime

    from gridfleet.ledger.store import list_runs

    engine = open_engine(ledger_url(ledger_db, config_path))
    found = list_runs(engine)
    if not found:
        click.echo("no runs in the ledger yet", err=True)
        return
    for r in found:
        started = (
            datetime.fromtimestamp(r.started_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            if r.started_at
            else "-"
        )
        on_time = f"{100 * r.rounds_on_time / r.rounds:.1f} %" if r.rounds else "-"
        click.echo(
            f"{r.run_id}  started {started}  {'finished' if r.finished else 'running '}  "
            f"{r.rounds} rounds ({on_time} on time)  {r.trades} trades "
            f"({r.settlement_trades} settlement), {r.energy_kwh:.3f} kWh  "
            f"{r.rejections} rejected"
        )


@click.command()
@click.argument("run_id")
@config_option
@ledger_option
@click.option(
    "--trades",
    "trades_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the run's trades here, one row per asset and trade.",
)
@click.option(
    "--rounds",
    "rounds_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write each aggregator's part of each round here (event and batch time, on time, "
    "commands, status, transaction id).",
)
@click.option(
    "--rejections",
    "rejections_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the commands the exchange rejected here, with its reasons.",
)
def export(
    run_id: str,
    config_path: str | None,
    ledger_db: str | None,
    trades_path: Path | None,
    rounds_path: Path | None,
    rejections_path: Path | None,
) -> None:
    """Export a run from the ledger: CSV, or Parquet for a .parquet name."""
    from gridfleet.ledger.store import EXPORTS, export_csv, export_parquet

    wanted = {"trades": trades_path, "rounds": rounds_path, "rejections": rejections_path}
    if not any(wanted.values()):
        raise BadInput("say what to export: --trades F, --rounds F and/or --rejections F")
    engine = open_run(run_id, ledger_db, config_path)
    for what, path in wanted.items():
        if path is None:
            continue
        try:
            if path.suffix.lower() == ".parquet":
                n = export_parquet(engine, run_id, what, path)
            else:
                with path.open("w", newline="") as out:
                    n = export_csv(engine, run_id, what, out)
        except OSError as exc:
            raise BadInput(f"cannot write {path}: {exc.strerror}") from None
        click.echo(f"{n} {EXPORTS[what].noun} of run {run_id} -> {path}", err=True)
    sys.stdout.flush()


@click.command()
@click.argument("run_id")
@config_option
@ledger_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for report.html and report.json (created).",
)
def report(run_id: str, config_path: str | None, ledger_db: str | None, out_dir: Path) -> None:
    """Build a run's report (report.html, report.json) from the ledger.

    A demo's run has the exchange's own measurements in the ledger too, and its report comes
    out with the demo's figures; a run against another exchange has the fleet's view only.
    """
    from gridfleet.ledger.store import get_documents, records_of
    from gridfleet.report import write_report

    engine = open_run(run_id, ledger_db, config_path)
    docs = get_documents(engine, run_id)
    records: list[Mapping[str, Any]] = list(records_of(engine, run_id))
    meta = {**docs.get("report_meta", {}), "run_id": run_id, "source": "ledger"}
    try:
        html = write_report(
            out_dir,
            sim_report=docs.get("sim_report", {}),
            records=records,
            counters=docs.get("counters", {}),
            meta=meta,
            market_stats=docs.get("market_stats"),
            slot_totals=docs.get("slot_totals"),
        )
    except OSError as exc:
        raise BadInput(f"cannot write the report into {out_dir}: {exc.strerror}") from None
    if "sim_report" not in docs:
        click.echo(
            "no exchange measurements for this run in the ledger: the report has the fleet's "
            "view only",
            err=True,
        )
    click.echo(f"report: {html}\n        {out_dir / 'report.json'}")
