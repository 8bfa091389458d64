"""A scripted stand-in for the exchange side, for testing the aggregator-side link only.

It answers CREATE / register / SELECT / batches the way the captured gsy-e does, and publishes
whatever events the test tells it to. The real simulator lives in gridfleet.simulator.
"""

from __future__ import annotations

import threading
import uuid

import orjson
import redis

from gridfleet.exchange import channels


class FakeExchange(threading.Thread):
    def __init__(self, url: str, assets: dict[str, str], silent: set[str] | None = None) -> None:
        super().__init__(daemon=True)
        self.redis = redis.Redis.from_url(url)
        self.assets = assets  # name -> uuid
        self.silent = silent or set()  # names whose registration gsy-e never answers
        self.aggregators: set[str] = set()
        self.owner: dict[str, str] = {}
        self.batches: list[dict] = []
        self._halt = threading.Event()
        self._ready = threading.Event()

    def run(self) -> None:
        ps = self.redis.pubsub()
        ps.subscribe(channels.AGGREGATOR_COMMANDS, channels.batch_commands())
        ps.psubscribe("*/register_participant")
        self._ready.set()
        while not self._halt.is_set():
            msg = ps.get_message(timeout=0.1)
            if not msg or msg["type"] not in ("message", "pmessage"):
                continue
            ch = msg["channel"].decode()
            data = orjson.loads(msg["data"])
            if ch == channels.AGGREGATOR_COMMANDS:
                self._aggregator_command(data)
            elif ch.endswith("/register_participant") and "/response/" not in ch:
                name = ch[: -len("/register_participant")]
                if name in self.silent:
                    continue  # e.g. a market without external_connection_available
                body = {
                    "command": "register",
                    "status": "ready",
                    "registered": True,
                    "transaction_id": data["transaction_id"],
                    "device_uuid": self.assets.get(name, str(uuid.uuid4())),
                }
                self.redis.publish(channels.register_participant_response(name), orjson.dumps(body))
            elif ch == channels.batch_commands():
                self.batches.append(data)
                responses = {
                    a: [
                        {
                            "command": c["type"],
                            "status": "ready",
                            "area_uuid": a,
                            "transaction_id": data["transaction_id"],
                        }
                        for c in cmds
                    ]
                    for a, cmds in data["batch_commands"].items()
                }
                body = {
                    "command": "batch_commands",
                    "transaction_id": data["transaction_id"],
                    "aggregator_uuid": data["aggregator_uuid"],
                    "responses": responses,
                }
                self.redis.publish(
                    channels.batch_response(data["aggregator_uuid"]), orjson.dumps(body)
                )
        ps.close()

    def _aggregator_command(self, data: dict) -> None:
        tid = data["transaction_id"]
        if data["type"] == "CREATE" and tid in self.aggregators:
            body = {"status": "error", "aggregator_uuid": tid, "transaction_id": tid}
        elif data["type"] == "CREATE":
            self.aggregators.add(tid)
            body = {"status": "ready", "name": data["name"], "transaction_id": tid}
        elif data["type"] == "SELECT":
            owner = self.owner.get(data["device_uuid"])
            if owner:  # gsy-e refuses a second SELECT even by the same aggregator
                body = {
                    "status": "error",
                    "aggregator_uuid": data["aggregator_uuid"],
                    "device_uuid": data["device_uuid"],
                    "transaction_id": tid,
                    "msg": f"Device already have selected {owner}",
                }
            else:
                self.owner[data["device_uuid"]] = data["aggregator_uuid"]
                body = {
                    "status": "SELECTED",
                    "aggregator_uuid": data["aggregator_uuid"],
                    "device_uuid": data["device_uuid"],
                    "transaction_id": tid,
                }
        else:
            body = {
                "status": "error",
                "aggregator_uuid": data.get("aggregator_uuid"),
                "transaction_id": tid,
            }
        self.redis.publish(channels.AGGREGATOR_RESPONSE, orjson.dumps(body))

    def start_ready(self) -> FakeExchange:
        self.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)
