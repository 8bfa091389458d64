"""One demo run from start to report: the stack, the live view (or plain lines), Ctrl-C."""

from __future__ import annotations

import signal

import orjson

from gridfleet.demo.live import panel, progress_line, summary_table
from gridfleet.demo.stack import DemoOptions, DemoStack

EXIT_INTERRUPTED = 130


def run_demo(opts: DemoOptions) -> int:
    """Run the demo; 0 when the report was written, 130 when interrupted (SIGINT/SIGTERM).

    Raises :class:`~gridfleet.demo.stack.DemoError` when a process dies or the fleet does not
    come up, :class:`~gridfleet.simulator.grid.GridError` for a grid that cannot be built; every
    process is stopped either way.
    """
    from rich.console import Console
    from rich.live import Live

    console = Console(soft_wrap=True)
    stack = DemoStack(opts)
    console.print(
        f"[bold]gridfleet demo[/]: {opts.assets} assets in {opts.aggregators} aggregators, {opts.slots} slots, a tick every {opts.tick_interval:g} s ({opts.tree} trees)"
    )
    console.print(f"run directory: {stack.run_dir}")

    def on_signal(signum: int, _frame: object) -> None:
        stack.stop_event.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.start(lambda msg: console.print(f"  {msg}"))
        if opts.headless:
            last_slot = None
            while not stack.finished() and not stack.stop_event.wait(0.5):
                stack.check_children()
                live = stack.refresh()
                if live.slot != last_slot:
                    last_slot = live.slot
                    console.print(progress_line(live))
        else:
            with Live(
                panel(stack.live, opts.tick_interval, stack.flower_url),
                console=console,
                refresh_per_second=4,
            ) as view:
                while not stack.finished() and not stack.stop_event.wait(0.25):
                    stack.check_children()
                    view.update(panel(stack.refresh(), opts.tick_interval, stack.flower_url))
        if stack.stop_event.is_set() and not stack.finished():
            console.print("[yellow]interrupted: stopping every process gridfleet started[/]")
            return EXIT_INTERRUPTED
        data = stack.collect()
        ledger_ok = stack.drain_ledger()
        stack.group.stop(grace_s=10)
        html = stack.write_report(data)
        report = orjson.loads((stack.run_dir / "report.json").read_bytes())
        console.print()
        console.print(summary_table(report))
        console.print(f"report: {html}\n        {stack.run_dir / 'report.json'}")
        ledger = stack.ledger_url.removeprefix("sqlite:///")
        if ledger_ok:
            console.print(
                f"ledger: {ledger} (run {stack.run_id}): gridfleet runs / gridfleet export "
                f"{stack.run_id} --trades trades.csv, with --ledger-url {stack.ledger_url}"
            )
        else:
            console.print(f"[yellow]ledger: run {stack.run_id} not fully written to {ledger}[/]")
        return 0
    finally:
        stack.stop()
        for s, h in old.items():
            signal.signal(s, h)
