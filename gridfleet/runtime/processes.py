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


def _port(base: int, offset: int) -> str:
    """The metrics port of a child: ``base + offset``, or 0 (off) when ``base`` is 0."""
    return str(base + offset if base else 0)


def _signal_group(child: Child, sig: int) -> None:
    if child.process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, sig)


LEDGER_DRAIN_S = 60.0
"""How long ``gridfleet run`` waits after the finish for the ledger writer to catch up."""


class FleetProcesses:
    """Ingress, coordinator and N workers for one fleet file, supervised until the run ends.

    All serve run ``run_id`` (see ``gridfleet.platform.runs``). With ``standby``, a second
    ingress and a second coordinator run beside the first ones and take over when one dies: the
    run then goes on as long as one of each role is alive.
    """

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
        run_id: str | None = None,
        standby: bool = False,
        ledger: bool = True,
    ) -> None:
        self.config_path = config_path
        self.run_id = run_id
        self.standby = standby
        self.ledger = ledger  # a `gridfleet ledger` child writes the run into the ledger
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
        run = ["--run-id", self.run_id] if self.run_id else []
        copies = [("", 0), ("-standby", 2)] if self.standby else [("", 0)]
        for suffix, offset in copies:
            self.group.start(
                f"coordinator{suffix}",
                [*base, "coordinator", "--metrics-port", _port(port, 1 + offset), *run],
            )
        for suffix, offset in copies:
            self.group.start(
                f"ingress{suffix}", [*base, "ingress", "--metrics-port", _port(port, offset), *run]
            )
        if self.ledger:
            # with the run id it exits on its own once the run is finished and written
            self.group.start("ledger", [*base, "ledger", *run])

    def _role(self, role: str) -> list[Child]:
        return [c for c in self.group.children if c.name.split("-")[0] == role]

    def run(self) -> int:
        """Start everything, wait until the ingress ends (the exchange finished) or a stop.

        Returns 0 when the run ended as it should (the exchange's finish, or a stop), 1 when a
        process failed; the failing process and its last error line are logged. With a standby,
        one ingress or coordinator dying is logged and the other goes on.
        """
        self.start()
        ingresses = self._role("ingress")
        told: set[str] = set()
        code = 0
        finished = False
        try:
            while not self.stop_event.wait(0.5):
                dead = [c for c in self.group.dead() if c.name not in told]
                if not any(c.alive for c in ingresses):
                    code = self._outcome(ingresses)
                    finished = code == 0
                    break
                failed: Child | None = None
                for child in dead:
                    told.add(child.name)
                    child_code = child.process.returncode if child.process else 1
                    role = child.name.split("-")[0]
                    if role == "ledger":
                        # the fleet trades on: the records wait on the broker for a writer
                        why = child.last_error()
                        log.error(
                            "the ledger writer exited with %s%s; the run's records stay on the "
                            "broker: `gridfleet ledger --run-id %s` writes them",
                            child_code,
                            f": {why}" if why else "",
                            self.run_id,
                        )
                        continue
                    if role == "ingress" and child_code == 0:
                        continue  # the finish: the other ingress follows
                    if role == "coordinator" and child_code == 0:
                        # At the exchange's finish the coordinator may leave before the
                        # ingress: the run's outcome is the ingress's.
                        code = self._wait_for(ingresses, timeout=15.0)
                        finished = code == 0
                        break
                    if role in ("ingress", "coordinator") and any(
                        c.alive for c in self._role(role)
                    ):
                        why = child.last_error()
                        log.warning(
                            "%s exited with %s%s; the standby takes over",
                            child.name,
                            child_code,
                            f": {why}" if why else "",
                        )
                        continue
                    failed = child
                    break
                if finished:
                    break
                if failed is not None:
                    self._report_failure(failed, failed.process.returncode if failed.process else 1)
                    code = 1
                    break
            if finished:  # the exchange's finish, not a stop: the writer ends on its own
                self._drain_ledger()
        finally:
            self.group.stop()
        return code

    def _drain_ledger(self, timeout: float = LEDGER_DRAIN_S) -> None:
        """After the finish: give the ledger writer time to write the run's last records."""
        for child in self._role("ledger"):
            if child.process is None or child.process.poll() is not None:
                continue
            try:
                child.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.error(
                    "the ledger writer did not finish within %.0f s; the rest of run %s stays "
                    "on the broker: `gridfleet ledger --run-id %s` writes it",
                    timeout,
                    self.run_id,
                    self.run_id,
                )

    def _wait_for(self, children: list[Child], timeout: float) -> int:
        deadline = time.monotonic() + timeout
        for child in children:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("the coordinator ended but %s did not within %.0f s", child.name, timeout)
                return 1
        return self._outcome(children)

    def _outcome(self, ingresses: list[Child]) -> int:
        """0 if an ingress saw the finish; else the failure of the last one to die."""
        codes = [(c, c.process.returncode if c.process else 1) for c in ingresses]
        if any(code == 0 for _, code in codes):
            return 0
        child, code = codes[-1]
        self._report_failure(child, code or 1)
        return code or 1

    @staticmethod
    def _report_failure(child: Child, code: int) -> None:
        why = child.last_error()
        log.error(
            "%s exited with %s%s; stopping the fleet",
            child.name,
            code,
            f": {why}" if why else "",
        )
