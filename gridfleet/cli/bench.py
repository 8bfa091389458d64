"""``gridfleet bench``: run the benchmarks that ship with the source repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

SUITES = {
    "protocol": "event parse time against orjson.loads (1k/10k/100k assets)",
    "strategies": "linear-ramp decisions per second, vectorized and per asset",
    "simulator": "the embedded exchange: event rounds, matching, batch application",
    "shard": "one worker process's shard throughput (for sizing workers)",
    "pipeline": "exchange-measured latency and on-time rate, pipeline vs one process (slow)",
    "rest": "the same fleet over REST + websocket and over Redis, in one run (slow)",
    "ledger": "ledger lag (published -> committed) on SQLite and PostgreSQL, trading (slow)",
    "ledger_write": "the ledger's write path alone: one 100 000-asset slot end, COPY vs INSERT",
}


def repo_root() -> Path:
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "bench_pipeline.py").exists():
        raise click.ClickException(
            "the benchmarks ship with the source repository; run this from a git checkout of gridfleet"
        )
    return root


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("suite", type=click.Choice([*SUITES, "all"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(suite: str, args: tuple[str, ...]) -> None:
    """Run a benchmark and write bench/results/<suite>.json (extra ARGS go to the script).

    \b
    protocol    event parse time against orjson.loads (1k/10k/100k assets)
    strategies  linear-ramp decisions per second, vectorized and per asset
    simulator   the embedded exchange: event rounds, matching, batch application
    shard       one worker process's shard throughput (for sizing workers)
    pipeline    exchange-measured latency and on-time rate, pipeline vs one process (slow)
    rest        the same fleet over REST + websocket and over Redis, in one run (slow)
    ledger      ledger lag (published -> committed) on SQLite and PostgreSQL, trading (slow)
    ledger_write  the ledger's write path alone: one 100 000-asset slot end, COPY vs INSERT
    """
    root = repo_root()
    for name in SUITES if suite == "all" else [suite]:
        click.echo(f"== bench {name}: {SUITES[name]}")
        code = subprocess.call([sys.executable, "-m", f"bench.bench_{name}", *args], cwd=root)
        if code:
            sys.exit(code)
