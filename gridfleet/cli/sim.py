"""``gridfleet sim``: the click command; the work is :mod:`gridfleet.simulator.standalone`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import redis

from gridfleet.cli import from_settings
from gridfleet.runtime.interpreter import keep_freed_memory
from gridfleet.runtime.redact import redact
from gridfleet.simulator import GridError, SimConfig, Simulator, assign_aggregators
from gridfleet.simulator.standalone import (
    build_grid,
    final_report,
    parse_duration,
    parse_start,
    summary_line,
)

EXIT_USAGE, EXIT_UNREACHABLE = 2, 3


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
@click.option(
    "--config-id",
    default="",
    help="Simulation (configuration) id: in the Redis channels as gsy-e's web mode puts it, and "
    "the REST door's {sim}; with --rest-port and no id, a fresh uuid is used for REST only.",
)
@click.option(
    "--rest-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve the REST + websocket API (rest.md) on 127.0.0.1:PORT (0: a free port).",
)
@click.option(
    "--rest-user",
    "rest_users_flags",
    multiple=True,
    metavar="NAME:PASSWORD",
    help="A REST user (repeatable).",
)
@click.option(
    "--rest-users",
    "rest_users_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="REST users from a JSON/YAML file {username: password}.",
)
@click.option(
    "--rest-token-lifetime",
    type=click.FloatRange(min=0.1),
    default=48 * 3600.0,
    show_default=True,
    help="Seconds a REST token stays valid.",
)
@click.option(
    "--rest-autostart",
    type=click.FloatRange(min=0),
    default=None,
    help="With --paused: start the slots this many seconds after the last REST selection, once "
    "every selecting aggregator's socket is open (the hosted side's 'Run').",
)
@click.option(
    "--settlement",
    is_flag=True,
    help="Settlement markets: after each slot, assets' deviations between measurement and spot "
    "trades are traded for an hour (also on with the grid file's settlement_markets: true).",
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
    config_id: str,
    rest_port: int | None,
    rest_users_flags: tuple[str, ...],
    rest_users_file: str | None,
    rest_token_lifetime: float,
    rest_autostart: float | None,
    settlement: bool,
) -> None:
    """Run the embedded gsy-e-compatible exchange until the last slot finishes."""
    rest = _rest_options(
        rest_port, rest_users_flags, rest_users_file, rest_token_lifetime, rest_autostart, paused
    )
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
        config_id=config_id,
        settlement=settlement,
        seed=seed,
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
    keep_freed_memory()  # this process is the exchange: it frees a round's worth per tick
    simulator = Simulator(grid, redis_url=redis_url, config=config, rest=rest)
    try:
        simulator.start()
    except (redis.ConnectionError, redis.TimeoutError, TimeoutError) as exc:
        click.echo(
            f"error: cannot reach Redis at {redact(str(redis_url))}: {redact(str(exc))}. "
            "Check --redis-url / GRIDFLEET_EXCHANGE_URL.",
            err=True,
        )
        sys.exit(EXIT_UNREACHABLE)
    except OSError as exc:  # only the REST door binds a port
        click.echo(
            f"error: --rest-port {rest_port}: cannot listen on 127.0.0.1 ({exc.strerror})", err=True
        )
        sys.exit(EXIT_USAGE)
    if rest is not None:
        click.echo(
            f"REST on {simulator.rest_url}, websockets on {simulator.rest_ws_url}, simulation id "
            f"{simulator.simulation_id}; {len(rest.users)} user(s)",
            err=True,
        )
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


def _rest_options(
    port: int | None,
    user_flags: tuple[str, ...],
    users_file: str | None,
    token_lifetime: float,
    autostart: float | None,
    paused: bool,
) -> Any:
    """The REST door's options from the flags (None without --rest-port); usage errors name
    the flag, never a password."""
    if port is None:
        if user_flags or users_file or autostart is not None:
            raise click.UsageError("--rest-user/--rest-users/--rest-autostart need --rest-port")
        return None
    if autostart is not None and not paused:
        raise click.UsageError("--rest-autostart starts a --paused run; add --paused")
    from gridfleet.simulator.rest_auth import UsersError, load_users_file, parse_user_flag
    from gridfleet.simulator.rest_door import RestOptions

    users: dict[str, str] = {}
    try:
        if users_file:
            users.update(load_users_file(users_file))
        for flag in user_flags:
            name, password = parse_user_flag(flag)
            users[name] = password
    except UsersError as exc:
        raise click.UsageError(str(exc)) from None
    if not users:
        raise click.UsageError(
            "--rest-port needs users: --rest-user NAME:PASSWORD or --rest-users FILE"
        )
    return RestOptions(
        users=users, port=port, token_lifetime_s=token_lifetime, autostart_after_s=autostart
    )
