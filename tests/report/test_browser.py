"""report.html in a real headless browser (Debian's chromium): it renders, without errors,
with its plots. Fails, never skips, when chromium is missing: issue 6 requires this check."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.report.pages import image_sizes

# Colours only the plots use (gridfleet.report.plots BLUE and ORANGE; the page's CSS has
# neither): their pixels on the screenshot prove the browser decoded and painted the PNGs.
PLOT_BLUE = (0x3B, 0x6F, 0xB6)
PLOT_ORANGE = (0xF0, 0xA0, 0x30)
WINDOW = (1280, 2000)


def chromium() -> str:
    """Path of the browser: $GRIDFLEET_CHROMIUM, ``chromium`` on PATH, or /usr/bin/chromium."""
    for candidate in (os.environ.get("GRIDFLEET_CHROMIUM"), shutil.which("chromium")):
        if candidate:
            return candidate
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    pytest.fail(
        "chromium is not installed, and the report's browser check needs it: "
        "install it with `apt-get install -y chromium` (Debian) or set GRIDFLEET_CHROMIUM "
        "to a chromium binary",
        pytrace=False,
    )


def run_chromium(page: Path, tmp: Path, *action: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--enable-logging=stderr",
        "--v=0",
        *action,
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def page_errors(stderr: str) -> list[str]:
    """Log lines about the page: console messages (the page has no script, so any is an
    error) and failed loads. Chromium's own noise (D-Bus, GPU, sandbox) is not about the page."""
    return [
        line
        for line in stderr.splitlines()
        if ":CONSOLE" in line or "net::ERR_" in line or "Not allowed to load" in line
    ]


def test_browser_renders_the_report_with_its_plots(report_html: Path, tmp_path: Path) -> None:
    dom = run_chromium(report_html, tmp_path, "--dump-dom")
    assert not page_errors(dom.stderr), page_errors(dom.stderr)
    assert "gridfleet run report" in dom.stdout
    # the DOM as the browser built it still holds the four plots, each a decodable PNG
    sizes = image_sizes(dom.stdout)
    assert len(sizes) == 4 and all(w > 0 and h > 0 for w, h in sizes), sizes

    shot = tmp_path / "shot.png"
    run = run_chromium(report_html, tmp_path, f"--screenshot={shot}")
    assert not page_errors(run.stderr), page_errors(run.stderr)
    assert shot.is_file(), f"no screenshot written:\n{run.stderr[-2000:]}"
    if keep := os.environ.get("GRIDFLEET_REPORT_SHOT"):  # to look at it by eye
        shutil.copy(shot, keep)
    px = np.asarray(Image.open(shot).convert("RGB"))
    assert px.shape[:2] == (WINDOW[1], WINDOW[0])
    colours = np.unique(px.reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"screenshot looks blank: {len(colours)} colours"

    def count(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(px.astype(int) - rgb).max(axis=2) <= 12).sum())

    # the latency lines (blue) and the late bars (orange) lie within the first 2000 px
    assert count(PLOT_BLUE) > 500, "the latency plot was not painted"
    assert count(PLOT_ORANGE) > 500, "the on-time plot was not painted"
