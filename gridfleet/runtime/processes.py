"""Starting and stopping the fleet's processes on one machine (``gridfleet run`` and the demo).

Each child (ingress, coordinator, workers, Flower) runs in its own process group, so stopping it
also stops what it forked (Celery's pool processes). Stopping is polite first (SIGTERM), then
firm (SIGKILL after a grace period); nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def gridfleet_command() -> list[str]:
    """How to start this gridfleet in a child process (the same interpreter)."""
    return [sys.executable, "-m", "gridfleet.cli"]


TAIL_LINES = 50
"""Lines of a child's output kept in memory when it has no log file: enough to say why it died."""


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def last_error(self) -> str | None:
        """The child's last error line (its last line when none says error), for the terminal."""
        lines = list(self.tail)
        if not lines and self.log_path is not None and self.log_path.exists():
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                lines = f.read().decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
        lines = [line.strip() for line in lines if line.strip()]
        for line in reversed(lines):
            if "error" in line.lower() or "Traceback" in line:
                return line[:500]
        return lines[-1][:500] if lines else None


def _keep_tail(child: Child, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        child.tail.append(raw.decode("utf-8", "replace").rstrip())
    stream.close()


@dataclass
class ProcessGroup:
    """Children started together and stopped together."""

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    log_dir: Path | None = None
    children: list[Child] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], extra_env: Mapping[str, str] | None = None
    ) -> Child:
        child = Child(name, list(argv))
        env = {**self.env, **(extra_env or {})}
        out: int | IO[bytes] = subprocess.PIPE  # drained into child.tail below
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            child.log_path = self.log_dir / f"{name}.log"
            out = child.log_path.open("ab")
        child.process = subprocess.Popen(
            child.argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if child.process.stdout is not None:
            threading.Thread(
                target=_keep_tail, args=(child, child.process.stdout), daemon=True
            ).start()
        self.children.append(child)
        log.info("started %s (pid %d)", name, child.process.pid)
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and c.process.poll() is not None]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every child's process group, wait up to ``grace_s``, then SIGKILL the rest."""
        for child in self.children:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", child.name, grace_s)
        for child in self.children:
            # Also the group: a pool process may outlive its parent.
            _signal_group(child, signal.SIGKILL)
            if child.process is not None:
                try:
                    child.process.wait(timeout=5)
                except subprocess.TimeoutExpired:  # pragma: no cover - the kernel did not reap it
                    log.error("%s (pid %d) would not die", child.name, child.process.pid)

    def pids(self) -> list[int]:
        return [c.process.pid for c in self.children if c.process is not None]


def _signal_group(child: Child, sig: int) -> None:
    if child.process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, sig)


class FleetProcesses:
    """Ingress, coordinator and N workers for one fleet file, supervised until the run ends."""

    def __init__(
        self,
        config_path: str,
        exchange_url: str,
        broker_url: str,
        *,
        workers: int = 2,
        metrics_port: int = 0,
        log_dir: Path | None = None,
        task_events: bool = False,
    ) -> None:
        self.config_path = config_path
        self.task_events = task_events  # the fleet file's flower_events
        # The children read these as their settings (gridfleet.settings); URLs travel in the
        # environment, never on a command line, where `ps` would show their passwords.
        self.env = {
            **os.environ,
            "GRIDFLEET_EXCHANGE_URL": exchange_url,
            "GRIDFLEET_BROKER_URL": broker_url,
            "GRIDFLEET_CONFIG": config_path,
        }
        self.workers = workers
        self.metrics_port = metrics_port
        self.group = ProcessGroup(env=self.env, log_dir=log_dir)
        self.stop_event = threading.Event()

    def start(self) -> None:
        base = gridfleet_command()
        if self.workers:
            events = ["--task-events"] if self.task_events else []
            self.group.start(
                "worker",
                [
                    *base,
                    "worker",
                    "--concurrency",
                    str(self.workers),
                    "--loglevel",
                    "WARNING",
                    *events,
                ],
            )
        port = self.metrics_port
        self.group.start(
            "coordinator", [*base, "coordinator", "--metrics-port", str(port + 1 if port else 0)]
        )
        self.group.start("ingress", [*base, "ingress", "--metrics-port", str(port)])

    def run(self) -> int:
        """Start everything, wait until ingress ends (the exchange finished) or a stop.

        Returns 0 when the run ended as it should (the exchange's finish, or a stop), 1 when a
        process failed; the failing process and its last error line are logged.
        """
        self.start()
        ingress = self.group.children[-1]
        code = 0
        try:
            while not self.stop_event.wait(0.5):
                if not ingress.alive:
                    code = ingress.process.returncode if ingress.process else 1
                    if code:
                        self._report_failure(ingress, code)
                    break
                dead = [c for c in self.group.dead() if c is not ingress]
                if not dead:
                    continue
                child = dead[0]
                child_code = child.process.returncode if child.process else 1
                if child.name == "coordinator" and child_code == 0:
                    # At the exchange's finish the coordinator may leave before the ingress:
                    # the run's outcome is the ingress's.
                    code = self._wait_for(ingress, timeout=15.0)
                    break
                self._report_failure(child, child_code)
                code = 1
                break
        finally:
            self.group.stop()
        return code

    def _wait_for(self, child: Child, timeout: float) -> int:
        assert child.process is not None
        try:
            code = child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("the coordinator ended but %s did not within %.0f s", child.name, timeout)
            return 1
        if code:
            self._report_failure(child, code)
        return code

    @staticmethod
    def _report_failure(child: Child, code: int) -> None:
        why = child.last_error()
        log.error(
            "%s exited with %s%s; stopping the fleet",
            child.name,
            code,
            f": {why}" if why else "",
        )
