"""``gridfleet demo``: the click command; what it runs is :mod:`gridfleet.demo`."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.option(
    "--assets",
    type=click.IntRange(1, 1_000_000),
    default=5000,
    show_default=True,
    help="Assets in the generated grid.",
)
@click.option(
    "--aggregators",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="Aggregators sharing them (whole houses each).",
)
@click.option(
    "--markets",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Community markets (default: one per 100 houses).",
)
@click.option(
    "--slots",
    type=click.IntRange(2, 1000),
    default=4,
    show_default=True,
    help="Market slots; the first is the exchange's warm-up (its ticks carry no tree).",
)
@click.option(
    "--tick-interval",
    type=click.FloatRange(0.05, 60),
    default=1.0,
    show_default=True,
    help="Real seconds between tick events (the deadline).",
)
@click.option(
    "--tree",
    type=click.Choice(["full", "pruned"]),
    default="pruned",
    show_default=True,
    help="full: every aggregator gets the whole grid (gsy-e); pruned: only its paths.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Celery worker processes.",
)
@click.option(
    "--shard-size",
    type=click.IntRange(1, 1_000_000),
    default=2000,
    show_default=True,
    help="Assets per shard task.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory for the report (default runs/<timestamp>).",
)
@click.option(
    "--no-flower", is_flag=True, help="Do not start Flower (saves the task-event overhead)."
)
@click.option("--headless", is_flag=True, help="Plain progress lines instead of the live view.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated grid.")
@click.option(
    "--transport",
    type=click.Choice(["redis", "rest"]),
    default="redis",
    show_default=True,
    help="How the fleet reaches the exchange: gsy-e's local Redis dialect, or the hosted REST + "
    "websocket API (the embedded exchange serves both).",
)
@click.option(
    "--settlement",
    is_flag=True,
    help="Turn settlement markets on: the exchange measures each asset with a 10 %% error, and "
    "the fleet also runs the settlement strategy on the deviations.",
)
def demo(
    assets: int,
    aggregators: int,
    markets: int | None,
    slots: int,
    tick_interval: float,
    tree: str,
    workers: int,
    shard_size: int,
    report_dir: Path | None,
    no_flower: bool,
    headless: bool,
    seed: int,
    transport: str,
    settlement: bool,
) -> None:
    """Run a fleet on the embedded exchange, show it live, and write a report.

    Starts private Redis servers, the exchange, Celery workers, coordinator, ingress and Flower;
    stops all of them at the end or on Ctrl-C.
    """
    # Imported here: building the command line must stay light (`gridfleet health worker`).
    from gridfleet.demo import DemoError, DemoOptions, run_demo
    from gridfleet.runtime.interpreter import keep_freed_memory
    from gridfleet.simulator.grid import GridError

    opts = DemoOptions(
        assets=assets,
        aggregators=aggregators,
        markets=markets,
        slots=slots,
        tick_interval=tick_interval,
        tree=tree,
        workers=workers,
        shard_size=shard_size,
        report_dir=report_dir,
        flower=not no_flower,
        headless=headless,
        seed=seed,
        transport=transport,
        settlement=settlement,
    )
    try:
        keep_freed_memory()  # this process hosts the embedded exchange
        code = run_demo(opts)
    except GridError as exc:
        raise click.UsageError(str(exc)) from None
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)
