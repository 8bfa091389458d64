"""What the demo shows while it runs and at the end: its figures, the rich panel, the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TICKS_PER_SLOT = 10


@dataclass
class LiveFigures:
    """What the live view shows, refreshed from the exchange and the fleet's event stream."""

    rounds_done: int = 0
    rounds_total: int = 0
    slot: str = "-"
    tick: int = 0
    on_time: int = 0
    late: int = 0
    missing: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    trades: int = 0
    energy_kwh: float = 0.0
    commands: int = 0
    refused: int = 0
    rejected: int = 0
    hedged: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)


def progress_line(live: LiveFigures) -> str:
    """One line per slot for ``--headless``."""
    return (
        f"  slot {live.slot}: {live.rounds_done}/{live.rounds_total} rounds, {live.on_time} batches"
        f" on time, {live.late} late, {live.missing} missing, {live.trades} trades"
    )


def panel(live: LiveFigures, tick_interval: float, flower: str | None) -> Any:
    """The live view: the figures as a table and the rounds as a progress bar."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    answered = live.on_time + live.late + live.missing
    on_time = f"{100 * live.on_time / answered:.1f} %" if answered else "-"
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", justify="right")
    table.add_column()
    table.add_row("slot / tick", f"{live.slot}  tick {live.tick}/{TICKS_PER_SLOT - 1}")
    table.add_row("rounds", f"{live.rounds_done} of {live.rounds_total}")
    table.add_row(
        "batches on time",
        f"{on_time}  ({live.on_time} on time, {live.late} late, {live.missing} missing; measured by the exchange)",
    )

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f} ms"

    table.add_row(
        "event -> batch",
        f"p50 {fmt(live.p50_ms)}   p99 {fmt(live.p99_ms)}   (deadline {tick_interval * 1000:.0f} ms)",
    )
    table.add_row("trades", f"{live.trades}   {live.energy_kwh:.1f} kWh")
    table.add_row(
        "commands",
        f"{live.commands} sent, {live.refused} refused before sending, {live.rejected} rejected by the exchange",
    )
    table.add_row("hedged shards", str(live.hedged))
    if flower:
        table.add_row("Flower", flower)
    bar = ProgressBar(total=max(1, live.rounds_total), completed=live.rounds_done, width=60)
    return Group(table, bar)


def summary_table(report: dict[str, Any]) -> Any:
    """The end-of-run table, from the run report (``report.json``)."""
    from rich.table import Table

    t = Table(
        title="gridfleet demo: what the exchange measured", show_header=True, header_style="bold"
    )
    t.add_column("figure")
    t.add_column("value", justify="right")
    lat = report.get("latency_ms", {})
    rows = [
        ("assets / aggregators", f"{report['assets']} / {report['aggregators']}"),
        ("rounds (ticks) evaluated", str(report["ticks"])),
        ("batches expected", str(report["batches_expected"])),
        (
            "on time / late / missing / idle",
            f"{report['batches_on_time']} / {report['batches_late']} / {report['batches_missing']}"
            f" / {report.get('batches_idle') or 0}",
        ),
        (
            "event -> batch p50 / p95 / p99 / max",
            " / ".join(
                "-" if lat.get(k) is None else f"{lat[k]:.0f} ms"
                for k in ("p50", "p95", "p99", "max")
            ),
        ),
        ("commands sent / rejected", f"{report['commands_sent']} / {report['commands_rejected']}"),
        ("hedged shards", str(report["hedged_shards"])),
        ("trades / energy traded", f"{report['trades']} / {report['energy_traded_kwh']:.1f} kWh"),
    ]
    settled = report.get("settlement")
    if settled:
        rows.append(
            (
                "settlement trades / energy settled",
                f"{settled['trades']} / {settled['energy_kwh']:.2f} kWh"
                f" of {settled['deviation_kwh']:.2f} kWh deviation",
            )
        )
    for k, v in rows:
        t.add_row(k, v)
    return t
