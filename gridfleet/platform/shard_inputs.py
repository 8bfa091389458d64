"""Where a round's shard inputs (the raw trees) wait for the workers.

On the broker (``SET`` with the round's TTL) they cross the network twice: ingress -> Redis ->
worker. At 100 000 assets that is 33 MB a round each way, and the broker's Redis spent 0.11 of a
core on it. When every worker runs on the ingress's machine (``gridfleet demo``, ``gridfleet run``,
one host with a loopback broker), the ingress writes each input into shared memory instead
(files under ``/dev/shm``, reused round after round so the kernel does not hand out and clear
fresh pages every time) and the broker key holds only a reference: ``REFERENCE`` + msgpack
``[path, seq, size]``. A worker resolves either form with :func:`resolve_input`.

A slot (one file) is reused once the round it held is past its deadline (plus a grace): nothing
reads a shard input after that (its task has expired, the coordinator's last wave is out). A
reader checks the slot's sequence number before and after reading, so a slot reused under a
very late reader reads as expired, never as another round's trees.

``GRIDFLEET_SHARD_INPUTS`` chooses: ``auto`` (shared memory when the broker is on loopback and
``/dev/shm`` is usable, the broker otherwise), ``redis`` or ``shared-memory``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import secrets
import shutil
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, get_args
from urllib.parse import urlsplit

import psutil
import redis

from gridfleet.platform.codec import packb, unpackb
from gridfleet.settings import ShardInputsMode

log = logging.getLogger(__name__)

SHM_ROOT = Path("/dev/shm")
REFERENCE = b"GFSHM1"
"""Prefix of a broker value that points into shared memory (a msgpack input never starts so)."""

_HEADER = struct.Struct("<8sQQ")  # magic, seq (0 while being written), size
_MAGIC = b"GFINPUT1"

REUSE_GRACE_S = 3.0
"""A slot is written again this long after the deadline of the round it held (or after it was
written, for a round written past its deadline). Nothing reads an input later: its task expires
at the deadline and the coordinator's last wave goes before it."""

MAX_SLOTS = 4096
"""Beyond this many live slots the inputs go to the broker (a runaway, not a fleet)."""

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_IOV_MAX = 1024  # buffers per pwritev (Linux's UIO_MAXIOV)


class InputStore(Protocol):
    """Where :func:`gridfleet.platform.shard.write_round` puts each shard's packed input."""

    def put(
        self,
        pipe: redis.client.Pipeline,
        key: str,
        pieces: Sequence[bytes],
        deadline: float,
        ttl_s: int,
    ) -> None:
        """Store one input, given in pieces (joined, they are its bytes: a shard's trees are
        not copied into one buffer first)."""

    def close(self) -> None: ...


class BrokerInputs:
    """Inputs on the broker itself: works wherever the workers run."""

    def put(
        self,
        pipe: redis.client.Pipeline,
        key: str,
        pieces: Sequence[bytes],
        deadline: float,
        ttl_s: int,
    ) -> None:
        pipe.set(key, b"".join(pieces), ex=ttl_s)

    def close(self) -> None:
        pass


@dataclass(slots=True)
class _Slot:
    fd: int
    path: str
    free_at: float  # wall clock


class SharedMemoryInputs:
    """Inputs in shared-memory files of this machine; the broker key holds a reference.

    One directory per ingress process (``/dev/shm/gridfleet-<uid>/<pid>-<random>``, mode 0700),
    removed by :meth:`close`; directories of processes that died are removed by the next one.
    A write that fails (``/dev/shm`` full, a container's 64 MB default) puts that input on the
    broker instead, with one warning a minute.
    """

    def __init__(self, root: Path | None = None) -> None:
        base = (root or SHM_ROOT) / f"gridfleet-{os.getuid()}"
        base.mkdir(mode=0o700, exist_ok=True)
        _remove_dead(base)
        self.dir = base / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.dir.mkdir(mode=0o700)
        self._slots: collections.deque[_Slot] = collections.deque()  # oldest write first
        self._seq = 0
        self._warned_at = -1e9
        self.fallbacks = 0  # inputs that went to the broker instead

    def put(
        self,
        pipe: redis.client.Pipeline,
        key: str,
        pieces: Sequence[bytes],
        deadline: float,
        ttl_s: int,
    ) -> None:
        try:
            ref = self._write(pieces, deadline)
        except OSError as exc:
            self.fallbacks += 1
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning(
                    "shard input not written to shared memory (%s); it goes to the broker%s",
                    exc,
                    " (/dev/shm is full: give the container more, or set"
                    " GRIDFLEET_SHARD_INPUTS=redis)"
                    if exc.errno == errno.ENOSPC
                    else "",
                )
            pipe.set(key, b"".join(pieces), ex=ttl_s)
            return
        pipe.set(key, ref, ex=ttl_s)

    def _write(self, pieces: Sequence[bytes], deadline: float) -> bytes:
        now = time.time()
        slots = self._slots
        if slots and slots[0].free_at <= now:
            slot = slots.popleft()
        elif len(slots) >= MAX_SLOTS:
            raise OSError(errno.EMFILE, f"{MAX_SLOTS} shard inputs alive in shared memory")
        else:
            path = str(self.dir / f"{len(slots)}-{secrets.token_hex(3)}")
            slot = _Slot(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), path, 0.0)
        size = sum(map(len, pieces))
        try:
            self._seq += 1
            # seq 0 first: a reader that sees this slot's old header before and after the data
            # would otherwise take half-old, half-new bytes for the old round's input.
            _pwrite_all(slot.fd, [_HEADER.pack(_MAGIC, 0, 0)], 0)
            _pwrite_all(slot.fd, pieces, _HEADER.size)
            _pwrite_all(slot.fd, [_HEADER.pack(_MAGIC, self._seq, size)], 0)
        except OSError:
            os.close(slot.fd)
            with contextlib.suppress(OSError):
                os.unlink(slot.path)
            raise
        # a round written after its deadline (an ingress running behind) is still read, by the
        # coordinator, right away: its slot is kept for the grace from now
        slot.free_at = max(deadline, now) + REUSE_GRACE_S
        slots.append(slot)
        return REFERENCE + packb([slot.path, self._seq, size])

    def close(self) -> None:
        for slot in self._slots:
            with contextlib.suppress(OSError):
                os.close(slot.fd)
        self._slots.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pwrite_all(fd: int, pieces: Sequence[bytes], offset: int) -> None:
    """The pieces written one after the other from ``offset``, up to ``_IOV_MAX`` a call."""
    rest: list[bytes | memoryview] = [p for p in pieces if len(p)]
    i = 0
    while i < len(rest):
        n = os.pwritev(fd, rest[i : i + _IOV_MAX], offset)
        if n <= 0:
            raise OSError(errno.EIO, "shared memory write made no progress")
        offset += n
        while n:  # skip what went; the rest of a piece written in part goes next
            size = len(rest[i])
            if n < size:
                rest[i] = memoryview(rest[i])[n:]
                break
            n -= size
            i += 1


def _remove_dead(base: Path) -> None:
    """Remove the directories of ingress processes that are gone (a crash leaves them)."""
    for entry in base.iterdir():
        pid_text = entry.name.partition("-")[0]
        if pid_text.isdigit() and not psutil.pid_exists(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


class InputUnreachable(LookupError):
    """The input is in shared memory this process cannot open (it runs on another machine)."""


def resolve_input(raw: bytes) -> bytes | None:
    """A shard's packed input from its broker value; None when it expired meanwhile."""
    if not raw.startswith(REFERENCE):
        return raw
    path, seq, size = unpackb(raw[len(REFERENCE) :])
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if Path(path).parent.parent.exists():
            return None  # its ingress stopped and cleaned up
        raise InputUnreachable(
            f"shard input in shared memory at {path} is not on this machine: the ingress runs"
            " on another one; set GRIDFLEET_SHARD_INPUTS=redis for the ingress"
        ) from None
    except PermissionError:
        raise InputUnreachable(
            f"shard input in shared memory at {path} is not readable by this user: run the"
            " workers as the ingress's user, or set GRIDFLEET_SHARD_INPUTS=redis for the ingress"
        ) from None
    try:
        if _header(fd) != (seq, size):
            return None
        data = os.pread(fd, size, _HEADER.size)
        if len(data) != size or _header(fd) != (seq, size):
            return None  # the slot was written again while this read it
        return data
    finally:
        os.close(fd)


def _header(fd: int) -> tuple[int, int] | None:
    raw = os.pread(fd, _HEADER.size, 0)
    if len(raw) != _HEADER.size:
        return None
    magic, seq, size = _HEADER.unpack(raw)
    return (seq, size) if magic == _MAGIC else None


def shared_memory_usable() -> bool:
    return SHM_ROOT.is_dir() and os.access(SHM_ROOT, os.W_OK | os.X_OK)


def open_input_store(mode: ShardInputsMode, broker_url: str) -> InputStore:
    """The store ``mode`` asks for; ``auto``: shared memory when the broker is on loopback (its
    workers are on this machine) and ``/dev/shm`` is usable."""
    if mode == "redis":
        return BrokerInputs()
    if mode == "shared-memory":
        if not shared_memory_usable():
            raise ValueError(
                f"GRIDFLEET_SHARD_INPUTS=shared-memory, but {SHM_ROOT} is not a writable directory"
            )
        return SharedMemoryInputs()
    if mode != "auto":
        raise ValueError(f"shard inputs {mode!r}: expected one of {get_args(ShardInputsMode)}")
    if broker_on_loopback(broker_url) and shared_memory_usable():
        return SharedMemoryInputs()
    return BrokerInputs()


def broker_on_loopback(broker_url: str) -> bool:
    """Whether a broker URL names this machine (loopback host or a unix socket)."""
    parts = urlsplit(broker_url)
    if parts.scheme.lower() == "unix":
        return True
    return (parts.hostname or "").lower() in _LOOPBACK
