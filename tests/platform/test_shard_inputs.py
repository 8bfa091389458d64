"""Shard inputs in shared memory: written, resolved, slots reused, never another round's bytes."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridfleet.platform import shard_inputs as si
from gridfleet.platform.rounds import TreePart
from gridfleet.platform.shard import ShardInput
from gridfleet.platform.shard_inputs import (
    REFERENCE,
    BrokerInputs,
    InputUnreachable,
    SharedMemoryInputs,
    broker_on_loopback,
    open_input_store,
    resolve_input,
)


class Pipe:
    """What write_round's pipeline is asked to SET (unit tests only)."""

    def __init__(self) -> None:
        self.sets: dict[str, tuple[bytes, int]] = {}

    def set(self, key: str, value: bytes, ex: int) -> None:
        self.sets[key] = (value, ex)


def put(store: Any, blob: bytes, deadline: float, key: str = "k") -> bytes:
    """Put ``blob``, handed over in pieces as write_round does (here cut in three)."""
    pipe = Pipe()
    third = len(blob) // 3
    store.put(
        pipe,
        key,
        [blob[:third], memoryview(blob)[third : 2 * third], blob[2 * third :]],
        deadline,
        120,
    )
    value, ttl = pipe.sets[key]
    assert ttl == 120
    return value


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(si, "REUSE_GRACE_S", 0.0)  # a past deadline frees its slot at once
    s = SharedMemoryInputs(root=tmp_path)
    yield s
    s.close()


def test_an_input_in_shared_memory_is_a_reference_on_the_broker_and_resolves_to_its_bytes(
    store: SharedMemoryInputs,
) -> None:
    blob = b"\x81\xa5parts" + os.urandom(100_000)
    ref = put(store, blob, time.time() + 5)
    assert ref.startswith(REFERENCE) and len(ref) < 200
    assert resolve_input(ref) == blob
    # an input kept on the broker is its own value
    assert put(BrokerInputs(), blob, time.time()) == blob
    assert resolve_input(blob) == blob


def test_a_slot_is_written_again_only_after_its_rounds_deadline(
    store: SharedMemoryInputs,
) -> None:
    now = time.time()
    first = put(store, b"a" * 1000, now - 60)  # its round is over
    second = put(store, b"b" * 10, now + 60)  # takes the first one's slot
    assert len(list(store.dir.iterdir())) == 1
    assert resolve_input(first) is None  # expired, never the second one's bytes
    assert resolve_input(second) == b"b" * 10
    # the second's round still runs: the next write gets a slot of its own
    third = put(store, b"c" * 500, now + 60)
    assert len(list(store.dir.iterdir())) == 2
    assert resolve_input(second) == b"b" * 10 and resolve_input(third) == b"c" * 500


def test_a_round_written_after_its_deadline_keeps_its_slot_for_the_grace(
    tmp_path: Path,
) -> None:
    """An ingress running behind writes rounds already past their deadline; the coordinator
    still reads them, so their slots are not handed to the next input at once."""
    store = SharedMemoryInputs(root=tmp_path)
    try:
        late = put(store, b"late round", time.time() - 60)
        after = put(store, b"next input", time.time() - 60)
        assert resolve_input(late) == b"late round" and resolve_input(after) == b"next input"
        assert len(list(store.dir.iterdir())) == 2
    finally:
        store.close()


def test_a_slot_being_written_reads_as_expired(store: SharedMemoryInputs) -> None:
    ref = put(store, b"x" * 64, time.time())
    (slot,) = store._slots
    # what the writer does first when it reuses the slot: mark it unreadable
    os.pwrite(slot.fd, si._HEADER.pack(si._MAGIC, 0, 0), 0)
    assert resolve_input(ref) is None


def test_a_full_shared_memory_sends_the_input_to_the_broker_with_one_clear_warning(
    store: SharedMemoryInputs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(fd: int, data: bytes, offset: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(si, "_pwrite_all", full)
    with caplog.at_level(logging.WARNING):
        assert put(store, b"trees", time.time()) == b"trees"
        assert put(store, b"more trees", time.time()) == b"more trees"
    assert store.fallbacks == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one a minute, not one per shard
    assert "/dev/shm is full" in warnings[0] and "GRIDFLEET_SHARD_INPUTS=redis" in warnings[0]
    assert list(store.dir.iterdir()) == []  # no half-written slot left behind


def test_an_input_on_another_machine_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    ref = REFERENCE + si.packb([str(tmp_path / "elsewhere" / "123-ab" / "0-cd"), 1, 10])
    with pytest.raises(InputUnreachable, match="GRIDFLEET_SHARD_INPUTS=redis"):
        resolve_input(ref)


def test_inputs_of_a_stopped_ingress_read_as_expired(tmp_path: Path) -> None:
    store = SharedMemoryInputs(root=tmp_path)
    ref = put(store, b"trees", time.time())
    store.close()
    assert not store.dir.exists()
    assert resolve_input(ref) is None


def test_directories_of_dead_ingress_processes_are_removed(tmp_path: Path) -> None:
    base = tmp_path / f"gridfleet-{os.getuid()}"
    base.mkdir()
    dead = base / "999999999-0badf00d"  # no such pid
    alive = base / f"{os.getpid()}-0badf00d"
    for d in (dead, alive):
        d.mkdir()
        (d / "0-aa").write_bytes(b"old")
    store = SharedMemoryInputs(root=tmp_path)
    try:
        assert not dead.exists() and alive.exists()
        assert oct(store.dir.stat().st_mode & 0o777) == oct(0o700)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://:pw@localhost:6380/1", True),
        ("rediss://[::1]:6379/0", True),
        ("unix:///run/redis.sock", True),
        ("redis://redis.gridfleet.svc:6379/0", False),
        ("redis://10.0.0.5:6379/0", False),
    ],
)
def test_auto_keeps_inputs_in_shared_memory_only_with_a_broker_on_this_machine(
    url: str, local: bool
) -> None:
    assert broker_on_loopback(url) is local
    store = open_input_store("auto", url)
    try:
        assert isinstance(store, SharedMemoryInputs if local else BrokerInputs)
    finally:
        store.close()
    assert isinstance(open_input_store("redis", "redis://127.0.0.1:6379/0"), BrokerInputs)


def test_shared_memory_asked_for_where_there_is_none_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(si, "SHM_ROOT", tmp_path / "missing")
    with pytest.raises(ValueError, match="GRIDFLEET_SHARD_INPUTS=shared-memory"):
        open_input_store("shared-memory", "redis://127.0.0.1:6379/0")
    # auto falls back to the broker
    assert isinstance(open_input_store("auto", "redis://127.0.0.1:6379/0"), BrokerInputs)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(min_size=0, max_size=3000), st.booleans()), min_size=1, max_size=30
    )
)
def test_a_reference_gives_its_own_bytes_or_none_never_another_inputs(
    writes: list[tuple[bytes, bool]],
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(si, "REUSE_GRACE_S", 0.0)
        store = SharedMemoryInputs(root=Path(tmp))
        try:
            now = time.time()
            refs = []
            for blob, past in writes:
                # a past deadline lets the next write take this slot
                refs.append((put(store, blob, now - 60 if past else now + 60), blob))
            for i, (ref, blob) in enumerate(refs):
                got = resolve_input(ref)
                assert got in (blob, None)
                if i == len(refs) - 1 or not writes[i][1]:
                    assert got == blob  # the newest, and any whose round still runs
        finally:
            store.close()


_SIZES = st.sampled_from([0, 1, 255, 256, 65535, 65536, 70_000]) | st.integers(0, 300)


@settings(max_examples=60, deadline=None)
@given(
    parts=st.lists(
        st.tuples(
            st.text(max_size=40),
            _SIZES,
            st.integers(0, 2**40),
            st.none() | st.integers(0, 2**40),
        ),
        max_size=20,
    )
)
def test_a_shard_input_in_pieces_is_its_packed_bytes(parts: list[Any]) -> None:
    """What write_round hands the store (trees not copied) joins to ``pack()``, across
    msgpack's header sizes (arrays of 15 and 16 parts; trees of 255, 256, 65 535, 65 536 bytes)."""
    shard = ShardInput([TreePart(a, bytes([n % 251]) * n, s, e) for a, n, s, e in parts])
    pieces = shard.pack_pieces()
    assert b"".join(pieces) == shard.pack()
    assert ShardInput.unpack(b"".join(pieces)) == shard


def test_pieces_are_written_whole_when_the_kernel_takes_a_few_bytes_a_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More pieces than one system call takes, each call writing only part of what it was
    given: every byte lands once, in order."""
    real = os.pwritev
    calls = []

    def stingy(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(len(buffers))
        return real(fd, [bytes(b"".join(buffers)[:7])], offset)

    monkeypatch.setattr(os, "pwritev", stingy)
    pieces = [bytes([i % 256]) * (i % 5) for i in range(3000)]
    fd = os.open(tmp_path / "slot", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        si._pwrite_all(fd, pieces, 24)
        assert os.pread(fd, 10**6, 24) == b"".join(pieces)
    finally:
        os.close(fd)
    assert max(calls) == si._IOV_MAX
