"""The replay exchange (gridfleet.simulator.replay): record a run of the embedded exchange once,
publish its events again to a real client, time the client as the embedded exchange does.

(``test_replay.py`` beside this file replays *client* sessions against the exchange; this one
replays the *exchange*.)
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from gridfleet.config import parse_config
from gridfleet.platform.local_loop import LocalLoop
from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.grid import Grid, assign_aggregators, generate_grid
from gridfleet.simulator.replay import (
    Frame,
    Recorder,
    Replay,
    ReplayFileError,
    ReplayMismatch,
    RoundTag,
    Send,
    load_recording,
    write_recording,
)
from gridfleet.simulator.runner import SimConfig, Simulator

ASSETS, AGGREGATORS, SLOTS, TICK = 200, 2, 2, 0.25


class Spy(threading.Thread):
    """Every event published on the exchange's Redis (aggregator and per-asset channels), per
    channel, in order."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=False)
        self.pubsub.psubscribe("*/events/*")  # both kinds; one pattern: no message twice
        deadline = time.monotonic() + 5
        while (msg := self.pubsub.get_message(timeout=0.1)) is None or msg["type"] != "psubscribe":
            assert time.monotonic() < deadline, "the spy could not subscribe"
        self.messages: dict[str, list[bytes]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            msg = self.pubsub.get_message(timeout=0.1)
            if msg and msg["type"] == "pmessage":
                self.messages.setdefault(msg["channel"].decode(), []).append(msg["data"])

    def stop(self) -> dict[str, list[bytes]]:
        time.sleep(0.3)  # the last messages are read
        self.halt.set()
        self.join(timeout=2)
        self.pubsub.close()
        self.client.close()
        return self.messages


class Client:
    """`gridfleet run --single-process` in a thread of the test: brings its fleet up (blocking,
    so the exchange must answer) and answers every round."""

    def __init__(self, url: str, grid: Grid) -> None:
        fleet = assign_aggregators(grid, AGGREGATORS)
        config = parse_config(
            {
                "exchange": {"url": url},
                "aggregators": [{"name": n, "assets": e["assets"]} for n, e in fleet.items()],
            }
        )
        self.loop = LocalLoop(config, url)
        self.loop.connect()
        self.thread = threading.Thread(target=self.loop.run, daemon=True, name="client")
        self.thread.start()

    def close(self) -> None:
        self.thread.join(timeout=10)  # it stops by itself at the finish events
        self.loop.close()


@pytest.fixture(scope="module")
def grid() -> Grid:
    return generate_grid(ASSETS, houses_size=10, seed=3)


@pytest.fixture(scope="module")
def recorded(
    grid: Grid, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict[str, list[bytes]], dict[str, Any]]]:
    """One embedded run recorded: (the file, what went over Redis, the exchange's report)."""
    path = tmp_path_factory.mktemp("replay") / "run.msgpack.gz"
    with RedisServer() as server:
        spy = Spy(server.url)
        spy.start()
        sim = Simulator(grid, server.url, SimConfig(slots=SLOTS, tick_interval=TICK, paused=True))
        recorder = Recorder(path).attach(sim)
        sim.start()
        client = None
        try:
            client = Client(server.url, grid)
            sim.resume()
            assert sim.wait(60), "the recorded run did not finish"
            time.sleep(0.3)
            report = sim.report()
        finally:
            if client is not None:
                client.close()
            sim.stop()
        wire = spy.stop()
    recorder.save()
    yield path, wire, report


def test_the_recording_is_what_the_exchange_published(
    recorded: tuple[Path, dict[str, list[bytes]], dict[str, Any]],
) -> None:
    path, wire, report = recorded
    rec = load_recording(path)
    assert rec.messages() == wire  # every event, byte for byte, in order, per channel
    assert len(rec.frames) == SLOTS * 10 + 1  # one per dispatch, the finish included
    rounds = [s.round for f in rec.frames for s in f.sends if s.round is not None]
    assert len(rounds) == report["summary"]["rounds"] == (SLOTS - 1) * 10
    assert rec.frames[-1].sends[-1].finish
    assert len(rec.aggregators) == AGGREGATORS
    assert sum(len(d) for d in rec.selected.values()) == ASSETS
    assert rec.tick_interval == TICK


def test_replay_to_a_real_client(
    grid: Grid, recorded: tuple[Path, dict[str, list[bytes]], dict[str, Any]]
) -> None:
    path, _, embedded = recorded
    rec = load_recording(path)
    with RedisServer() as server:
        spy = Spy(server.url)
        spy.start()
        replay = Replay(path, server.url).start()
        client = None
        try:
            client = Client(server.url, grid)  # its bring-up is answered by the replay
            assert replay.selected_count() == ASSETS
            replay.resume()
            assert replay.wait(60), "the replay did not finish"
            assert replay.error is None
            time.sleep(0.3)
            report = replay.report()
        finally:
            if client is not None:
                client.close()
            replay.stop()
        wire = spy.stop()
    # what the client got is the recording, byte for byte, in order, per channel
    assert wire == rec.messages()
    # the same report fields as the embedded exchange's
    assert report.keys() == embedded.keys()
    assert report["summary"].keys() == embedded["summary"].keys()
    assert report["ticks"][0].keys() == embedded["ticks"][0].keys()
    assert embedded["meta"].keys() <= report["meta"].keys()
    assert report["meta"]["exchange"] == "replay"
    s = report["summary"]
    assert s["rounds"] == embedded["summary"]["rounds"] == (SLOTS - 1) * 10
    assert s["aggregator_rounds"] == embedded["summary"]["aggregator_rounds"]
    assert s["aggregator_rounds"] == s["rounds"] * AGGREGATORS
    # every aggregator's batch of every round is counted
    assert s["missing"] == 0
    assert s["unattributed_batches"] == 0
    for row in report["ticks"]:
        assert row["aggregators"] == AGGREGATORS
        assert row["on_time"] + row["late"] + row["idle"] == AGGREGATORS, row
    for agg in report["aggregators"].values():
        assert agg["on_time"] + agg["late"] + agg["idle"] == s["rounds"], agg
    assert s["first_batch_ms"]["p50"] is not None
    assert report["meta"]["counts"]["batches_received"] >= s["on_time"] + s["late"]


def test_replay_refuses_a_fleet_that_is_not_the_recorded_one(
    recorded: tuple[Path, dict[str, list[bytes]], dict[str, Any]], redis_url: str
) -> None:
    path, _, _ = recorded
    replay = Replay(path, redis_url).start()
    try:
        with pytest.raises(ReplayMismatch, match="selected nothing") as err:
            replay.resume()  # no client came
        assert str(path) in str(err.value)
    finally:
        replay.stop()


# ---------------------------------------------------------------------------------------------
# bad files


def _small(path: Path) -> Path:
    sends = [
        Send(
            ["external-aggregator//a/events/all"],
            [b'{"event":"tick"}'],
            RoundTag("s", 0, ["a"], []),
        ),
    ]
    return write_recording(
        path,
        {
            "config": {"tick_interval": 0.1},
            "aggregators": {"a": "agg-a"},
            "selected": {"a": ["d"]},
            "names": {"asset": "d"},
        },
        [Frame(0.0, sends), Frame(0.1, sends)],
    )


def _raw(path: Path, *objects: Any) -> Path:
    path.write_bytes(b"".join(msgpack.packb(o, use_bin_type=True) for o in objects))
    return path


HEADER = {
    "format": "gridfleet-replay",
    "version": 1,
    "config": {},
    "aggregators": {},
    "selected": {},
    "names": {},
    "frames": 1,
}


def test_a_small_recording_round_trips(tmp_path: Path) -> None:
    for name in ("r.msgpack", "r.msgpack.gz"):
        rec = load_recording(_small(tmp_path / name))
        assert len(rec.frames) == 2
        assert rec.frames[1].sends[0].round == RoundTag("s", 0, ["a"], [])
        assert rec.messages() == {"external-aggregator//a/events/all": [b'{"event":"tick"}'] * 2}
    assert (tmp_path / "r.msgpack.gz").read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: p, "cannot read the recording"),
        (lambda p: (p.write_bytes(b""), p)[1], "not a gridfleet replay recording"),
        (lambda p: (p.write_bytes(b"hello, world"), p)[1], "not a gridfleet replay recording"),
        (lambda p: _raw(p, {"format": "something-else"}), "not a gridfleet replay recording"),
        (lambda p: _raw(p, {**HEADER, "version": 99}), "format version 99"),
        (lambda p: _raw(p, {**HEADER, "names": None}), "header: no 'names' dict"),
        (lambda p: (p.write_bytes(_raw(p, HEADER).read_bytes() + b"\xc1"), p)[1], "corrupt"),
        (
            lambda p: _raw(
                p, HEADER, {"t": 0.0, "sends": [{"channels": ["c"], "payloads": ["x"]}]}
            ),
            "frame 0, send 0: 'payloads' is not a list of byte strings",
        ),
        (
            lambda p: _raw(
                p,
                HEADER,
                {"t": 0.0, "sends": [{"channels": ["c"], "payloads": [b"x"], "round": [1]}]},
            ),
            "frame 0, send 0: 'round' is not",
        ),
        (lambda p: _raw(p, HEADER, {"sends": []}), "frame 0: no time 't'"),
        (lambda p: _raw(p, HEADER, {"t": 0.0, "sends": []}), "truncated"),
        (
            lambda p: _raw(p, HEADER, {"t": 0, "sends": []}, {"t": 1, "sends": []}, {"end": True}),
            "2 frames, but the header says 1",
        ),
        (lambda p: (p.write_bytes(_small(p).read_bytes()[:-7]), p)[1], "truncated"),
    ],
)
def test_a_bad_recording_names_the_file_and_the_problem(
    tmp_path: Path, make: Any, what: str
) -> None:
    path = make(tmp_path / "bad.msgpack")
    with pytest.raises(ReplayFileError, match=r"bad\.msgpack") as err:
        load_recording(path)
    assert what in str(err.value)
    assert str(path) in str(err.value)


def test_a_damaged_gzip_recording(tmp_path: Path) -> None:
    good = _small(tmp_path / "good.msgpack.gz").read_bytes()
    cut = tmp_path / "cut.msgpack.gz"
    cut.write_bytes(good[: len(good) - 12])
    with pytest.raises(ReplayFileError, match=r"cut\.msgpack\.gz: (not a valid gzip|.*truncated)"):
        load_recording(cut)
    flipped = tmp_path / "flipped.msgpack.gz"
    mid = len(good) // 2  # inside the deflate stream
    flipped.write_bytes(good[:mid] + bytes([good[mid] ^ 0xFF]) + good[mid + 1 :])
    with pytest.raises(ReplayFileError, match=r"flipped\.msgpack\.gz: "):
        load_recording(flipped)
    assert gzip.decompress(good)  # the good one is plain gzip
