"""Record what the embedded exchange publishes once; replay it to clients with almost no CPU.

At 100 000 assets the embedded exchange (building every aggregator's tree, applying the
batches, matching) needs most of a 2-core machine, so a benchmark cannot see what the client
costs. A recording keeps every event the exchange published on Redis in a run (market, tick,
trade and finish events, per-asset events), grouped by dispatch (one tick boundary), with what
the deadline accounting needs to know of each round: its market slot and completion, which
aggregators it went to and which of them were idle. :class:`Replay` then publishes those bytes
again at the tick interval, on the same channels, and measures the client exactly as the
embedded exchange does (:class:`~gridfleet.simulator.deadline.DeadlineTracker`, the same
report fields). It does not match, apply or answer batches: a gridfleet client needs no answer
to keep going (the answers only feed its records of rejections and market statistics). Trade
events are replayed as recorded: they are part of the client's load, whatever it sends.

Recording (the embedded exchange runs as usual, the recorder wraps its outlet)::

    sim = Simulator(grid, url, SimConfig(slots=3, tick_interval=1.0, paused=True))
    recorder = Recorder("run.msgpack.gz").attach(sim)   # before sim.start()
    sim.start(); ...; sim.resume(); sim.wait()
    recorder.save()

Replaying (the same fleet file: the aggregators' uuids come from its namespace and names)::

    replay = Replay("run.msgpack.gz", url).start()     # answers the client's bring-up
    ...                                                 # the client selects its fleet
    replay.resume(); replay.wait(); replay.report(); replay.stop()

The file is a stream of msgpack objects (gzip-compressed when its name ends in ``.gz``; read
either way): a header, one object per dispatch, an end marker. No pickle: a recording is data.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import queue
import re
import threading
import time
import zlib
from collections.abc import Container, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgpack
import orjson
import redis

from gridfleet.exchange import channels
from gridfleet.runtime.redact import redact
from gridfleet.simulator.deadline import DeadlineTracker, percentiles
from gridfleet.simulator.door import (
    AGG_COMMAND,
    BATCH,
    REGISTER,
    DeliveryFailed,
    Inbound,
    Outbox,
    Outlet,
    Payload,
    payload_bytes,
)
from gridfleet.simulator.engine import EngineWatcher
from gridfleet.simulator.redis_door import Inbox, RedisOutbox
from gridfleet.simulator.registry import AggregatorRegistry
from gridfleet.simulator.reporting import Counts

if TYPE_CHECKING:
    from gridfleet.simulator.runner import Simulator

log = logging.getLogger(__name__)

FORMAT = "gridfleet-replay"
VERSION = 1
MAX_OBJECT_BYTES = 1 << 30  # one dispatch of a 100 000-asset run is ~70 MB
_GZIP_MAGIC = b"\x1f\x8b"
_AGG_EVENTS = re.compile(r"^external-aggregator/[^/]*/[^/]+/events/all$")
# gridfleet's clients put these first in a BATCHED message (RedisPubSubLink.batch_message):
# read them without parsing a batch that can be megabytes long
_BATCH_HEAD = re.compile(
    rb'^\{"type":"BATCHED","transaction_id":"([^"\\]*)","aggregator_uuid":"([^"\\]*)"'
)


class ReplayFileError(ValueError):
    """A recording that cannot be replayed; the message names the file and what is wrong."""


class ReplayMismatch(RuntimeError):
    """The client's aggregators or selections are not the recording's."""


# ---------------------------------------------------------------------------------------------
# What a recording holds


@dataclass(slots=True)
class RoundTag:
    """What the deadline accounting needs of one tick round (``DeadlineTracker.round_sent``)."""

    market_slot: str
    completion: int
    aggregators: list[str]
    idle: list[str]


@dataclass(slots=True)
class Send:
    """One pass of the exchange's outbox: messages published together, in order."""

    channels: list[str]
    payloads: list[bytes]
    round: RoundTag | None = None  # the tick round whose events these are
    finish: bool = False  # the finish events


@dataclass(slots=True)
class Frame:
    """One dispatch (a tick boundary): trade events, then the next round (or the finish)."""

    t: float  # seconds after the first dispatch, as recorded
    sends: list[Send]


@dataclass
class Recording:
    header: dict[str, Any]
    frames: list[Frame]

    @property
    def tick_interval(self) -> float | None:
        value = self.header["config"].get("tick_interval")
        return None if value is None else float(value)

    @property
    def aggregators(self) -> dict[str, str]:
        """uuid -> name of the aggregators of the recorded run."""
        return dict(self.header["aggregators"])

    @property
    def selected(self) -> dict[str, set[str]]:
        """aggregator uuid -> the devices it had selected in the recorded run."""
        return {agg: set(devs) for agg, devs in self.header["selected"].items()}

    def messages(self) -> dict[str, list[bytes]]:
        """channel -> every payload published on it, in order (what a replay publishes)."""
        out: dict[str, list[bytes]] = {}
        for frame in self.frames:
            for send in frame.sends:
                for ch, payload in zip(send.channels, send.payloads, strict=True):
                    out.setdefault(ch, []).append(payload)
        return out


# ---------------------------------------------------------------------------------------------
# Writing and reading the file


def _send_obj(send: Send) -> dict[str, Any]:
    r = send.round
    return {
        "channels": send.channels,
        "payloads": send.payloads,
        "round": None if r is None else [r.market_slot, r.completion, r.aggregators, r.idle],
        "finish": send.finish,
    }


def write_recording(path: Path | str, header: dict[str, Any], frames: list[Frame]) -> Path:
    """Write a recording (gzip when ``path`` ends in ``.gz``), atomically: a file that exists
    is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    head = {**header, "format": FORMAT, "version": VERSION, "frames": len(frames)}
    try:
        with open(tmp, "wb") as raw:
            out: BinaryIO = (
                gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0)  # type: ignore[assignment]
                if path.name.endswith(".gz")
                else raw
            )
            packer = msgpack.Packer(use_bin_type=True)
            out.write(packer.pack(head))
            for frame in frames:
                out.write(packer.pack({"t": frame.t, "sends": [_send_obj(s) for s in frame.sends]}))
            out.write(packer.pack({"end": True, "frames": len(frames)}))
            if out is not raw:
                out.close()
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _open(path: Path) -> BinaryIO:
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
        return gzip.open(path, "rb") if compressed else open(path, "rb")  # type: ignore[return-value]
    except OSError as exc:
        raise ReplayFileError(f"{path}: cannot read the recording ({exc.strerror})") from None


def _objects(path: Path, stream: BinaryIO) -> Iterator[Any]:
    unpacker = msgpack.Unpacker(
        stream,
        raw=False,
        max_buffer_size=MAX_OBJECT_BYTES,
        read_size=1 << 20,
    )
    n = 0
    while True:
        try:
            obj = next(unpacker)
        except StopIteration:
            return
        except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
            raise ReplayFileError(
                f"{path}: not a valid gzip stream ({exc}): the file is damaged or cut short"
            ) from None
        except msgpack.exceptions.BufferFull:
            raise ReplayFileError(
                f"{path}: object {n} claims more than {MAX_OBJECT_BYTES >> 20} MiB: corrupt"
            ) from None
        except (ValueError, msgpack.exceptions.UnpackException) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise ReplayFileError(
                f"{path}: corrupt msgpack data in object {n} (0: the header; {why})"
            ) from None
        n += 1
        yield obj


def _expect(path: Path, ok: bool, where: str, what: str) -> None:
    if not ok:
        raise ReplayFileError(f"{path}: {where}: {what}")


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _parse_send(path: Path, where: str, obj: Any) -> Send:
    _expect(path, isinstance(obj, dict), where, "not a map")
    chans, payloads = obj.get("channels"), obj.get("payloads")
    _expect(path, _str_list(chans), where, "'channels' is not a list of strings")
    _expect(
        path,
        isinstance(payloads, list) and all(isinstance(p, bytes) for p in payloads),
        where,
        "'payloads' is not a list of byte strings",
    )
    _expect(path, len(chans) == len(payloads), where, "'channels' and 'payloads' differ in length")
    tag = obj.get("round")
    rnd = None
    if tag is not None:
        _expect(
            path,
            isinstance(tag, list)
            and len(tag) == 4
            and isinstance(tag[0], str)
            and isinstance(tag[1], int)
            and _str_list(tag[2])
            and _str_list(tag[3]),
            where,
            "'round' is not [market slot, completion, aggregators, idle]",
        )
        rnd = RoundTag(tag[0], tag[1], tag[2], tag[3])
    return Send(chans, payloads, rnd, bool(obj.get("finish")))


def load_recording(path: Path | str) -> Recording:
    """Read a whole recording; :class:`ReplayFileError` (naming the file and the problem) when
    it is not one, is of another format version, damaged or cut short."""
    path = Path(path)
    with _open(path) as stream:
        objects = _objects(path, stream)
        header = next(objects, None)
        if not (isinstance(header, dict) and header.get("format") == FORMAT):
            raise ReplayFileError(
                f"{path}: not a gridfleet replay recording (no {FORMAT!r} header; record one"
                " with gridfleet.simulator.replay.Recorder)"
            )
        if header.get("version") != VERSION:
            raise ReplayFileError(
                f"{path}: recording format version {header.get('version')!r}; this gridfleet"
                f" reads version {VERSION}: record it again"
            )
        for key, kind in (
            ("config", dict),
            ("aggregators", dict),
            ("selected", dict),
            ("names", dict),
            ("frames", int),
        ):
            _expect(
                path, isinstance(header.get(key), kind), "header", f"no {key!r} {kind.__name__}"
            )
        _expect(
            path,
            all(
                isinstance(v, str)
                for v in [*header["aggregators"].values(), *header["names"].values()]
            )
            and all(_str_list(v) for v in header["selected"].values()),
            "header",
            "'aggregators', 'names' or 'selected' hold something else than uuids",
        )
        interval = header["config"].get("tick_interval")
        _expect(
            path,
            interval is None or isinstance(interval, int | float),
            "header",
            f"tick_interval {interval!r} is not a number",
        )
        frames: list[Frame] = []
        end = None
        for obj in objects:
            if isinstance(obj, dict) and obj.get("end") is True:
                end = obj
                break
            where = f"frame {len(frames)}"
            _expect(path, isinstance(obj, dict), where, "not a map")
            t, sends = obj.get("t"), obj.get("sends")
            _expect(path, isinstance(t, int | float), where, "no time 't'")
            _expect(path, isinstance(sends, list), where, "no 'sends' list")
            frames.append(
                Frame(
                    float(t),
                    [_parse_send(path, f"{where}, send {i}", s) for i, s in enumerate(sends)],
                )
            )
        if end is None:
            raise ReplayFileError(
                f"{path}: ends after {len(frames)} of {header['frames']} frames without its end"
                " marker: the file is truncated"
            )
        if next(objects, None) is not None:
            raise ReplayFileError(f"{path}: data after the end marker")
    if len(frames) != header["frames"] or end.get("frames") != len(frames):
        raise ReplayFileError(
            f"{path}: {len(frames)} frames, but the header says {header['frames']} and the end"
            f" marker {end.get('frames')}"
        )
    return Recording(header, frames)


# ---------------------------------------------------------------------------------------------
# Recording a run of the embedded exchange


class _RecordingOutbox:
    """Forwards to the door's outbox and keeps every event it publishes, with its channel."""

    __slots__ = ("_cid", "_inner", "_rec", "channels", "payloads")

    def __init__(self, inner: Outbox, recorder: Recorder, config_id: str) -> None:
        self._inner = inner
        self._rec = recorder
        self._cid = config_id
        self.channels: list[str] = []
        self.payloads: list[bytes] = []

    def aggregator_event(self, aggregator: str, payload: Payload) -> None:
        self._inner.aggregator_event(aggregator, payload)
        self.channels.append(channels.aggregator_events(aggregator, self._cid))
        self.payloads.append(payload_bytes(payload))

    def asset_event(self, name: str, event: str, payload: bytes) -> None:
        self._inner.asset_event(name, event, payload)
        self.channels.append(channels.asset_events(name, event))
        self.payloads.append(bytes(payload))

    # answers and heartbeats are not replayed (a replay answers its own client)
    def batch_response(self, aggregator: str, payload: Payload) -> None:
        self._inner.batch_response(aggregator, payload)

    def aggregator_response(self, payload: bytes) -> None:
        self._inner.aggregator_response(payload)

    def register_response(self, name: str, payload: bytes) -> None:
        self._inner.register_response(name, payload)

    def control_response(self, command: str, payload: bytes) -> None:
        self._inner.control_response(command, payload)

    def heartbeat(self, payload: bytes) -> None:
        self._inner.heartbeat(payload)

    def send(self) -> None:
        try:
            self._inner.send()
        except DeliveryFailed:
            self._rec._failed(bool(self.channels))
            raise
        if self.channels:
            self._rec._sent(self.channels, self.payloads)


class _RecordingOutlet:
    def __init__(self, inner: Outlet, recorder: Recorder, config_id: str) -> None:
        self.inner = inner
        self.recorder = recorder
        self.config_id = config_id

    def outbox(self) -> _RecordingOutbox:
        return _RecordingOutbox(self.inner.outbox(), self.recorder, self.config_id)


class Recorder(EngineWatcher):
    """Keeps every event an embedded exchange publishes over Redis, per dispatch, in memory;
    :meth:`save` writes them (after the run: writing does not slow the recorded exchange).

    :meth:`attach` wraps the simulator's outlet (to see each outbox pass) and watches its
    engine (:class:`~gridfleet.simulator.engine.EngineWatcher`: which passes make one tick
    boundary, which pass is a round or the finish).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.frames: list[Frame] = []
        self.sim: Simulator | None = None
        self.undelivered = 0  # event passes the door could not send (not in the recording)
        self._current: Frame | None = None
        self._t0: float | None = None
        self._round: RoundTag | None = None
        self._finishing = False

    def attach(self, sim: Simulator) -> Recorder:
        """Record ``sim`` (before :meth:`Simulator.start`; the Redis door only)."""
        if sim.rest_door is not None:
            raise ValueError("a recording replays the Redis door only: no REST door")
        if getattr(sim, "_thread", None) is not None:
            raise RuntimeError("attach the recorder before sim.start()")
        engine = sim.engine
        if type(engine.watcher) is not EngineWatcher:
            raise RuntimeError("the engine is already watched")
        engine.outlet = _RecordingOutlet(engine.outlet, self, sim.config.config_id)
        engine.watcher = self
        self.sim = sim
        return self

    # -- called on the engine thread

    def _now(self) -> float:
        now = time.time()
        if self._t0 is None:
            self._t0 = now
        return now - self._t0

    def dispatch_started(self) -> None:
        self._current = Frame(self._now(), [])

    def round_sent(
        self, market_slot: str, completion: int, aggregators: list[str], idle: Container[str]
    ) -> None:
        self._round = RoundTag(
            market_slot, completion, list(aggregators), [a for a in aggregators if a in idle]
        )

    def finishing(self) -> None:
        self._finishing = True

    def dispatch_ended(self) -> None:
        frame, self._current = self._current, None
        if frame is not None and frame.sends:
            self.frames.append(frame)

    def _sent(self, chans: list[str], payloads: list[bytes]) -> None:
        send = Send(chans, payloads, self._round, self._finishing)
        self._round = None
        self._finishing = False
        if self._current is not None:
            self._current.sends.append(send)
        else:  # outside a dispatch (a /stop finishes the run from the intake)
            self.frames.append(Frame(self._now(), [send]))

    def _failed(self, events: bool) -> None:
        if events:
            self.undelivered += 1
            self._round = None  # a round that did not go out is not replayed

    # -- after the run

    def header(self) -> dict[str, Any]:
        sim = self.sim
        if sim is None:
            raise RuntimeError("attach() the recorder to a simulator first")
        reg = sim.registry
        config = asdict(sim.config)
        config["slot_length"] = sim.config.slot_length.total_seconds()
        config["start"] = sim.config.start.isoformat()
        return {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": config,
            "grid": sim.grid.describe(),
            "aggregators": dict(reg.aggregators),
            "selected": {agg: sorted(devs) for agg, devs in reg.selected.items()},
            # what the client registered: name (or market slug) -> device uuid
            "names": {n: u for n, u in reg.names.items() if u in reg.registered},
            "recorded_summary": sim.report()["summary"],
            "undelivered_sends": self.undelivered,
        }

    def save(self, path: Path | str | None = None) -> Path:
        """Write the recording (after the run finished); returns its path."""
        if self.sim is not None and not self.sim.finished.is_set():
            raise RuntimeError("save() once the recorded run finished")
        if not self.frames:
            raise RuntimeError("nothing recorded: did the simulation run?")
        if self.undelivered:
            log.warning(
                "%d event passes could not be delivered while recording: the recording lacks"
                " them (record a run without Redis outages)",
                self.undelivered,
            )
        return write_recording(path or self.path, self.header(), self.frames)


# ---------------------------------------------------------------------------------------------
# Replaying


def _batch_head(data: bytes) -> tuple[str | None, object]:
    """(aggregator uuid, transaction id) of a BATCHED message, read from its head when it is
    gridfleet's layout, else parsed."""
    m = _BATCH_HEAD.match(data[:400])
    if m is not None:
        return m.group(2).decode(), m.group(1).decode()
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    agg = body.get("aggregator_uuid")
    return (agg if isinstance(agg, str) else None), body.get("transaction_id")


@dataclass(slots=True)
class _Prepared:
    packed: list[Any]  # the PUBLISH commands in Redis's wire format, packed before the run
    count: int
    round: RoundTag | None
    finish: bool


class Replay:
    """Publishes a recording's events at the tick interval and measures the client like the
    embedded exchange (same :class:`DeadlineTracker`, same report fields).

    ``recording``: a file (its frames are dropped once :meth:`start` packed them) or a
    :class:`Recording`. ``tick_interval``: seconds between dispatches (default: the
    recording's). The client's bring-up (CREATE, registrations, SELECT) is answered from the
    recording's names, as the embedded exchange answers it; batches are timed and attributed,
    never applied or answered.
    :meth:`resume` starts the clock once the client selected what the recorded client did.
    """

    def __init__(
        self,
        recording: Path | str | Recording,
        redis_url: str,
        *,
        tick_interval: float | None = None,
        heartbeat_interval: float | None = None,
    ) -> None:
        self.recording = (
            recording if isinstance(recording, Recording) else load_recording(recording)
        )
        self.path = None if isinstance(recording, Recording) else Path(recording)
        header = self.recording.header
        interval = tick_interval if tick_interval is not None else self.recording.tick_interval
        if interval is None or interval <= 0:
            raise ValueError(
                f"{self.path or 'the recording'} was made in manual mode: give a tick_interval"
            )
        self.tick_interval = float(interval)
        self.heartbeat_interval = float(
            heartbeat_interval or header["config"].get("heartbeat_interval") or 5.0
        )
        self.config_id = str(header["config"].get("config_id") or "")
        self.redis_url = redis_url
        names: dict[str, str] = header["names"]
        devices = {u: "" for u in names.values()}
        for devs in header["selected"].values():
            devices.update(dict.fromkeys(devs, ""))
        self.registry = AggregatorRegistry(devices=devices)
        self.registry.names.update(names)
        self.deadline = DeadlineTracker()
        self.counts = Counts()
        self.inbound: queue.Queue[Inbound] = queue.Queue()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.counting_since = math.inf
        self.finished_at = math.inf
        self._lock = threading.Lock()  # the tracker, the registry: two threads use them
        self._resumed = threading.Event()
        self._stop = threading.Event()
        self._prepared: list[list[_Prepared]] = []
        self._threads: list[threading.Thread] = []
        self._pub: redis.Redis | None = None
        self._answers: redis.Redis | None = None
        self._conn: Any = None
        self._inbox: Inbox | None = None
        self._publish_ms: list[float] = []
        self._round_publish_ms: list[float] = []
        self._ignored_controls = 0

    # -- lifecycle

    def start(self) -> Replay:
        """Connect, pack every PUBLISH, subscribe and answer the bring-up; the clock waits for
        :meth:`resume`."""
        self._pub = redis.Redis.from_url(self.redis_url, socket_timeout=30)
        self._answers = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        self._conn = self._pub.connection_pool.get_connection()
        pack = self._conn.pack_commands
        # one buffer per send, written with one sendall in the run (a copy of the payloads)
        self._prepared = [
            [
                _Prepared(
                    [
                        b"".join(
                            pack(
                                [
                                    ("PUBLISH", ch, p)
                                    for ch, p in zip(s.channels, s.payloads, strict=True)
                                ]
                            )
                        )
                    ],
                    len(s.channels),
                    s.round,
                    s.finish,
                )
                for s in frame.sends
            ]
            for frame in self.recording.frames
        ]
        sends = [s for f in self.recording.frames for s in f.sends]
        self.counts.bytes_sent = sum(
            len(p)
            for s in sends
            for ch, p in zip(s.channels, s.payloads, strict=True)
            if _AGG_EVENTS.match(ch)
        )
        self.counts.events_sent = sum(
            1 for s in sends for ch in s.channels if _AGG_EVENTS.match(ch)
        )
        if self.path is not None:
            # read from the file by us: the packed copy is all the run needs (a full-tree
            # recording is gigabytes)
            self.recording.frames = []
        self._inbox = Inbox(
            redis.Redis.from_url(self.redis_url, socket_read_size=1 << 20),
            self.inbound,
            self.config_id,
        )
        self._inbox.start()
        for target, name in ((self._intake, "replay-intake"), (self._clock, "replay-clock")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def selection_differences(self) -> list[str]:
        """How the client's aggregators and selections differ from the recording's (empty:
        they match)."""
        with self._lock:
            live = {a: set(d) for a, d in self.registry.selected.items() if d}
        want = {a: d for a, d in self.recording.selected.items() if d}
        names = {**self.recording.aggregators, **self.registry.aggregators}
        out = []
        for agg in sorted(want.keys() - live.keys()):
            out.append(f"aggregator {names.get(agg, agg)!r} ({agg}) selected nothing")
        for agg in sorted(live.keys() - want.keys()):
            out.append(f"aggregator {names.get(agg, agg)!r} ({agg}) is not in the recording")
        for agg in sorted(want.keys() & live.keys()):
            missing, extra = len(want[agg] - live[agg]), len(live[agg] - want[agg])
            if missing or extra:
                out.append(
                    f"aggregator {names.get(agg, agg)!r}: {missing} recorded devices not"
                    f" selected, {extra} selected beyond the recording"
                )
        return out

    def selected_count(self) -> int:
        """Devices the client selected so far (safe to call while it selects)."""
        with self._lock:
            return sum(len(d) for d in self.registry.selected.values())

    def resume(self, check: bool = True) -> None:
        """Start the clock. ``check``: first require the client's selection to be the
        recording's (:class:`ReplayMismatch` naming the differences otherwise): events
        addressed to other uuids would reach nobody."""
        if check:
            diff = self.selection_differences()
            if diff:
                more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
                raise ReplayMismatch(
                    f"the client's fleet is not the one recorded in {self.path}: "
                    + "; ".join(diff[:5])
                    + more
                    + ". Replay needs the fleet file (namespace, aggregator names, assets)"
                    " the recording was made with"
                )
        self._resumed.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every frame was published; False on timeout."""
        return self.finished.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._inbox is not None:
            self._inbox.stop()
        if self._conn is not None and self._pub is not None:
            with contextlib.suppress(Exception):
                self._pub.connection_pool.release(self._conn)
        for client in (self._pub, self._answers):
            if client is not None:
                client.close()

    # -- the clock thread: publish the frames

    def _clock(self) -> None:
        try:
            next_heartbeat = 0.0
            while not self._resumed.is_set():
                if self._stop.is_set():
                    return
                if time.time() >= next_heartbeat:
                    self._heartbeat()
                    next_heartbeat = time.time() + self.heartbeat_interval
                self._resumed.wait(0.05)
            next_dispatch = time.time()
            for frame in self._prepared:
                while True:
                    now = time.time()
                    if now >= next_heartbeat:
                        self._heartbeat()
                        next_heartbeat = now + self.heartbeat_interval
                    if now >= next_dispatch:
                        break
                    if self._stop.wait(min(next_dispatch - now, 0.5)):
                        return
                self._dispatch(frame)
                # the engine's cadence: if a frame overran the interval, do not catch up
                next_dispatch = max(next_dispatch + self.tick_interval, time.time())
        except BaseException as exc:
            log.exception("replay clock crashed")
            self.error = exc
        finally:
            self.finished.set()

    def _dispatch(self, frame: list[_Prepared]) -> None:
        t0 = time.perf_counter()
        tracker = self.deadline
        finish = False
        for send in frame:
            now = time.time()
            number = None
            if send.round is not None:
                r = send.round
                with self._lock:
                    self.counting_since = min(self.counting_since, now)
                    number = tracker.round_sent(
                        r.market_slot, r.completion, now, r.aggregators, set(r.idle)
                    )
            if send.finish:
                finish = True
                with self._lock:
                    self.finished_at = now
                    tracker.finish(now)
            t_send = time.perf_counter()
            ok = self._publish(send)
            if send.round is not None:
                self._round_publish_ms.append((time.perf_counter() - t_send) * 1000)
            if not ok and send.round is not None:
                with self._lock:
                    tracker.round_undelivered(
                        f"{send.round.market_slot} {send.round.completion}%", number
                    )
        if not finish:
            self.counts.rounds += 1
        self._publish_ms.append((time.perf_counter() - t0) * 1000)

    def _publish(self, send: _Prepared) -> bool:
        """Send the packed PUBLISHes on the clock's own connection and read the replies."""
        conn = self._conn
        try:
            conn.send_packed_command(send.packed, check_health=False)
            for _ in range(send.count):
                conn.read_response()
        except (redis.RedisError, OSError) as exc:
            conn.disconnect()  # the next send connects again
            self.counts.undelivered_sends += 1
            with self._lock:
                opened = self.deadline.delivery_failed(time.time())
            if opened:
                log.warning(
                    "replay cannot deliver (%s); the clock goes on",
                    redact(str(exc)) or type(exc).__name__,
                )
            return False
        with self._lock:
            self.deadline.delivery_restored(time.time())
        return True

    def _heartbeat(self) -> None:
        try:
            self._conn.send_command(
                "PUBLISH", channels.HEARTBEAT, orjson.dumps({"time": int(time.time())})
            )
            self._conn.read_response()
        except (redis.RedisError, OSError):
            self._conn.disconnect()

    # -- the intake thread: time the batches, answer the bring-up

    def _intake(self) -> None:
        inbound = self.inbound
        while not self._stop.is_set():
            try:
                msgs = [inbound.get(timeout=0.1)]
            except queue.Empty:
                continue
            with contextlib.suppress(queue.Empty):
                while len(msgs) < 5000:
                    msgs.append(inbound.get_nowait())
            out: RedisOutbox | None = None
            for msg in msgs:
                try:
                    if msg.kind == BATCH:
                        self._batch(msg)
                        continue
                    if out is None:
                        assert self._answers is not None
                        out = RedisOutbox(self._answers, self.config_id)
                    self._answer(msg, out)
                except Exception:  # one bad message must not stop the replay
                    log.exception(
                        "replay could not handle a message (%s, %s)", msg.kind, msg.origin
                    )
            if out is not None:
                try:
                    out.send()
                except DeliveryFailed as exc:
                    log.warning("replay could not answer the bring-up: %s", exc)

    def _batch(self, msg: Inbound) -> None:
        agg, tid = _batch_head(msg.data)
        with self._lock:
            self.counts.batches_received += 1
            if agg is None or not self.registry.selected.get(agg):
                return
            if self.counting_since <= msg.at <= self.finished_at:
                self.deadline.batch_arrived(agg, msg.at, tid)

    def _answer(self, msg: Inbound, out: RedisOutbox) -> None:
        try:
            data = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        if msg.kind == AGG_COMMAND:
            with self._lock:
                answers = self.registry.command(data)
                self.registry.changed.clear()
            for answer in answers:
                out.aggregator_response(orjson.dumps(answer))
        elif msg.kind == REGISTER:
            with self._lock:
                registered = self.registry.register(msg.origin, data)
            if registered is not None:
                out.register_response(msg.origin, orjson.dumps(registered))
        else:  # pause / resume / stop: a replay's clock is the recording's
            self._ignored_controls += 1
            if self._ignored_controls == 1:
                log.warning("replay ignores /%s (and any later control command)", msg.origin)

    # -- the report

    def report(self) -> dict[str, Any]:
        """The deadline report: the embedded exchange's fields; ``meta`` says it was a replay."""
        deadline = time.monotonic() + 2.0
        while not self.inbound.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        header = self.recording.header
        config = {**header["config"], "tick_interval": self.tick_interval}
        with self._lock:
            c = asdict(self.counts)
            for key in ("round_ms", "match_ms", "event_round_ms", "trade_events_ms"):
                c.pop(key)
            meta = {
                "exchange": "replay",
                "recording": str(self.path) if self.path else None,
                "grid": header.get("grid"),
                "config": config,
                "counts": c,
                # publishing each dispatch's recorded events (nothing is built or matched)
                "round_build_publish_ms": _rounded(self._publish_ms),
                "event_round_ms": _rounded(self._round_publish_ms),
                "match_ms": _rounded([]),
                "first_slot_excluded": True,
                "recorded_summary": header.get("recorded_summary"),
            }
            names = {**self.recording.aggregators, **self.registry.aggregators}
            return self.deadline.report(meta, names=names)


def _rounded(values: list[float]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 3) for k, v in percentiles(values).items()}
