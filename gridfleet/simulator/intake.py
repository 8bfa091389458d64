"""Messages in: what the doors queued, applied by the engine thread between tick rounds.

Aggregator commands and registrations are answered at once; consecutive batches are applied
together (one numpy pass over all their orders, ``BatchHandler.respond_many``), in chunks, with
a look at the dispatch clock between chunks so a backlog never delays a round.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import time
from typing import TYPE_CHECKING, Any

import orjson

from gridfleet.runtime.interpreter import gc_paused
from gridfleet.simulator.batch import BatchItem
from gridfleet.simulator.batch_decode import Typed, decode_batch
from gridfleet.simulator.door import AGG_COMMAND, BATCH, CALL, CONTROL, REGISTER, Inbound, Outbox

if TYPE_CHECKING:
    from gridfleet.simulator.engine import Engine

log = logging.getLogger(__name__)


class Intake:
    """The engine's inbound side: the queue every door feeds and the backlog read from it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.inbound: queue.Queue[Inbound] = queue.Queue()
        self.backlog: collections.deque[Inbound] = collections.deque()
        self.batch_chunk = 200  # messages applied between two looks at the dispatch clock
        engine.handler.selections = engine.registry  # what the handler remembers follows it

    def drain(self, wait: float, until: float = math.inf) -> None:
        """Apply what came in, in chunks of ``batch_chunk`` messages, until ``until`` (the next
        dispatch): a backlog never delays a tick round; what is left waits in ``backlog`` for
        the next pass. Each message keeps the time the door read it (deadline accounting)."""
        q = self.inbound
        backlog = self.backlog
        try:
            if not backlog:
                backlog.append(q.get(timeout=wait) if wait > 0 else q.get_nowait())
            while len(backlog) < 20000:
                backlog.append(q.get_nowait())
        except queue.Empty:
            pass
        while backlog:
            n = min(len(backlog), self.batch_chunk)
            with gc_paused():
                self.apply([backlog.popleft() for _ in range(n)])
            if time.time() >= until:
                break

    def account_backlog(self, now: float) -> None:
        """At the finish: batches read before it but not applied yet still count as arrived
        (deadline report); they get no answer, like any batch after the final tick."""
        backlog = self.backlog
        with contextlib.suppress(queue.Empty):
            while True:
                backlog.append(self.inbound.get_nowait())
        while backlog:
            msg = backlog.popleft()
            if msg.kind == CALL and msg.call is not None:
                msg.call(self.engine)  # a door waits on it: run it, the state is still ours
            elif msg.kind == BATCH and msg.at <= now:
                data = self.parse_batch(msg)
                if data is not None:
                    self.batch_item(data, msg.at)

    def apply(self, msgs: list[Inbound]) -> None:
        """Handle messages in order; consecutive batches are applied together."""
        out = self.engine.outlet.outbox()
        group: list[BatchItem] = []
        for msg in msgs:
            try:
                if msg.kind == CALL:
                    if group:  # batches read before the call are applied before it
                        self.answer(group, out)
                        group = []
                    if msg.call is not None:
                        msg.call(self.engine)
                    continue
                if msg.kind == BATCH:
                    batch = self.parse_batch(msg)
                    item = None if batch is None else self.batch_item(batch, msg.at)
                    if item is not None:
                        group.append(item)
                    continue
                data = self.parse(msg)
                if data is None:
                    continue
                if group:
                    self.answer(group, out)
                    group = []
                out = self.handle(msg, data, out)
            except Exception:  # one bad message must never stop the exchange
                log.exception("could not handle a message (%s, %s)", msg.kind, msg.origin)
        if group:
            self.answer(group, out)
        self.engine.deliver(out)

    @staticmethod
    def parse(msg: Inbound) -> dict[str, Any] | None:
        """The message as a JSON object; None (logged) when it is not one."""
        try:
            data = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            log.info("non-JSON message (%s, %s) ignored", msg.kind, msg.origin)
            return None
        if not isinstance(data, dict):
            log.info("message (%s, %s) is not a JSON object; ignored", msg.kind, msg.origin)
            return None
        return data

    @classmethod
    def parse_batch(cls, msg: Inbound) -> dict[str, Any] | Typed | None:
        """A BATCHED message: of the common shape, decoded strictly (cheaper to apply); else
        as :meth:`parse` reads it."""
        return decode_batch(msg.data) or cls.parse(msg)

    def handle(self, msg: Inbound, data: dict[str, Any], out: Outbox) -> Outbox:
        """Answer one non-batch message into ``out``; returns the outbox to go on with (a
        ``stop`` sends ``out`` and finishes the run, which sends its own)."""
        registry = self.engine.registry
        if msg.kind == AGG_COMMAND:
            for answer in registry.command(data):
                out.aggregator_response(orjson.dumps(answer))
        elif msg.kind == REGISTER:
            registered = registry.register(msg.origin, data)
            if registered is not None:
                out.register_response(msg.origin, orjson.dumps(registered))
        elif msg.kind == CONTROL:
            return self.control(msg.origin, data, out)
        return out

    def control(self, command: str, data: dict[str, Any], out: Outbox) -> Outbox:
        """``pause`` / ``resume`` / ``stop``, answered as gsy-e does; anything else is ignored."""
        engine = self.engine
        if command == "pause":
            engine.paused = True
        elif command == "resume":
            engine.paused = False
        elif command != "stop":
            return out
        out.control_response(
            command,
            orjson.dumps(
                {
                    "command": command,
                    "simulation_id": engine.config.config_id,
                    "transaction_id": data.get("transaction_id"),
                    "status": "success",
                }
            ),
        )
        if command == "stop":
            engine.deliver(out)
            engine.finish()
            return engine.outlet.outbox()
        return out

    def batch_item(self, data: dict[str, Any] | Typed, at: float) -> BatchItem | None:
        """Count a batch and record its arrival (``at``: when the door read it); return what
        the handler needs, or None when it gets no answer."""
        engine = self.engine
        engine.counts.batches_received += 1
        agg = data.get("aggregator_uuid")
        registry = engine.registry
        if not isinstance(agg, str) or agg not in registry.aggregators:
            return None
        if registry.selected.get(agg) and at >= engine.counting_since:
            engine.deadline.batch_arrived(agg, at, data.get("transaction_id"))
        if engine.finished.is_set():
            return None  # answered after the final tick: no response, as gsy-e
        return data, registry.selected.get(agg, set()), agg

    def answer(self, group: list[BatchItem], out: Outbox) -> None:
        """Apply a run of batches at once and queue their answers."""
        engine = self.engine
        counts = engine.counts
        for (_, _, agg), result in zip(
            group, engine.handler.respond_many(group, pieces=True), strict=True
        ):
            if isinstance(result, Exception):
                log.error("could not answer a batch of %s: %r", agg, result)
                continue
            answer, n_cmds = result
            if answer is None:
                continue
            counts.commands += n_cmds
            counts.batches_answered += 1
            out.batch_response(agg, answer)
