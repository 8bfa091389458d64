"""``gridfleet sim``: the click command; the work is :mod:`gridfleet.simulator.standalone`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import redis

from gridfleet.cli import from_settings
from gridfleet.runtime.redact import redact
from gridfleet.simulator import GridError, SimConfig, Simulator, assign_aggregators
from gridfleet.simulator.standalone import (
    build_grid,
    final_report,
    parse_duration,
    parse_start,
    summary_line,
)

EXIT_UNREACHABLE = 3


@click.command("sim")
@click.option(
    "--redis-url",
    default=from_settings("exchange_url"),
    help="Redis the exchange speaks on [env GRIDFLEET_EXCHANGE_URL]; default: start an embedded redis-server.",
)
@click.option(
    "--grid",
    "grid_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Grid file (YAML or JSON): a tree of markets and assets.",
)
@click.option(
    "--assets", type=click.IntRange(min=1), default=None, help="Generate a grid with N assets."
)
@click.option(
    "--aggregators",
    type=click.IntRange(min=1),
    default=None,
    help="Pre-assign the assets to A aggregator names (agg-000...); see --fleet-out.",
)
@click.option(
    "--markets",
    type=click.IntRange(min=1),
    default=None,
    help="Community markets between the grid and the houses (default: one per 100 houses).",
)
@click.option(
    "--houses-size",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Assets per house.",
)
@click.option(
    "--slots", type=click.IntRange(min=1), default=8, show_default=True, help="Market slots to run."
)
@click.option(
    "--slot-length", default="15min", show_default=True, help="Simulated length of a slot."
)
@click.option(
    "--tick-interval",
    type=click.FloatRange(min=0.001),
    default=1.0,
    show_default=True,
    help="Real seconds between tick events (10 per slot).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the generated grid and uuids."
)
@click.option(
    "--start-date",
    default="2024-06-01",
    show_default=True,
    help="Simulated start (ISO date or date-time).",
)
@click.option("--paused", is_flag=True, help="Wait for /resume before the first tick, like gsy-e.")
@click.option(
    "--tree",
    type=click.Choice(["full", "pruned"]),
    default="full",
    show_default=True,
    help="full: whole tree to every aggregator (gsy-e); pruned: only its paths to the root.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the deadline report (JSON) here at the end.",
)
@click.option(
    "--fleet-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --aggregators: write {aggregator: {assets, asset_uuids, markets, market_uuids}} here.",
)
def sim(
    redis_url: str | None,
    grid_file: str | None,
    assets: int | None,
    aggregators: int | None,
    markets: int | None,
    houses_size: int,
    slots: int,
    slot_length: str,
    tick_interval: float,
    seed: int,
    start_date: str,
    paused: bool,
    tree: str,
    report_path: str | None,
    fleet_out: str | None,
) -> None:
    """Run the embedded gsy-e-compatible exchange until the last slot finishes."""
    if grid_file and assets:
        raise click.UsageError("give either --grid FILE or --assets N, not both")
    if not grid_file and not assets:
        raise click.UsageError("give --grid FILE (YAML/JSON grid) or --assets N to generate one")
    if grid_file and markets is not None:
        raise click.UsageError("--markets only applies to a generated grid (--assets N)")
    try:
        grid = build_grid(grid_file, assets, markets, houses_size, seed)
    except GridError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        length, start = parse_duration(slot_length), parse_start(start_date)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    config = SimConfig(
        slots=slots,
        slot_length=length,
        tick_interval=tick_interval,
        start=start,
        paused=paused,
        tree=tree,  # type: ignore[arg-type]
    )
    if fleet_out and not aggregators:
        raise click.UsageError(
            "--fleet-out needs --aggregators A (how many aggregators to split the grid into)"
        )
    if aggregators:
        try:
            fleet = assign_aggregators(grid, aggregators)
        except GridError as exc:
            raise click.UsageError(str(exc)) from exc
        if fleet_out:
            Path(fleet_out).write_text(json.dumps(fleet, indent=1))
            click.echo(f"fleet assignment: {aggregators} aggregators -> {fleet_out}", err=True)
    if tree == "full" and grid.n_assets * max(1, aggregators or 1) > 5_000_000:
        click.echo(
            "warning: --tree full sends the whole tree to every aggregator; at this size "
            "that is gigabytes per tick. Consider --tree pruned.",
            err=True,
        )
    simulator = Simulator(grid, redis_url=redis_url, config=config)
    try:
        simulator.start()
    except (redis.ConnectionError, redis.TimeoutError, TimeoutError) as exc:
        click.echo(
            f"error: cannot reach Redis at {redact(str(redis_url))}: {redact(str(exc))}. "
            "Check --redis-url / GRIDFLEET_EXCHANGE_URL.",
            err=True,
        )
        sys.exit(EXIT_UNREACHABLE)
    click.echo(
        f"exchange on {redact(simulator.redis_url)}: {grid.describe()}; {slots} slots x 10 ticks every "
        f"{tick_interval} s, tree {tree}{' (paused: send /resume)' if paused else ''}",
        err=True,
    )
    try:
        while not simulator.wait(timeout=0.5):
            pass
    except KeyboardInterrupt:
        click.echo("interrupted; writing what was measured", err=True)
    finally:
        simulator.stop()
    report = final_report(simulator, " ".join(["gridfleet", *sys.argv[1:]]), report_path)
    click.echo(summary_line(report, report_path), err=True)
    if simulator.error is not None:
        sys.exit(1)
