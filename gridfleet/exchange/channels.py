"""Every Redis pub/sub channel of the gsy-e aggregator protocol, in one place.

In local mode gsy-e's configuration id is the empty string, hence the ``//`` in the
``external-aggregator//...`` channels. Pass ``config_id`` for a hosted simulation.
"""

from __future__ import annotations

import re

from slugify import slugify as _slugify

AGGREGATOR_COMMANDS = "aggregator-commands"
AGGREGATOR_RESPONSE = "aggregator-response"
HEARTBEAT = "gsy-e-heartbeat/"
SIM_CONTROL_COMMANDS = ("pause", "resume", "stop")


def batch_commands(config_id: str = "") -> str:
    """Where every aggregator publishes its BATCHED message."""
    return f"external-aggregator/{config_id}/batch_commands"


def aggregator_events(aggregator_uuid: str, config_id: str = "") -> str:
    """Where the exchange publishes market/tick/trade/finish events for one aggregator."""
    return f"external-aggregator/{config_id}/{aggregator_uuid}/events/all"


def aggregator_events_pattern(config_id: str = "") -> str:
    """PSUBSCRIBE pattern matching every aggregator's event channel."""
    return f"external-aggregator/{config_id}/*/events/all"


def batch_response(aggregator_uuid: str, config_id: str = "") -> str:
    """Where the exchange answers one aggregator's batches."""
    return f"external-aggregator/{config_id}/{aggregator_uuid}/response/batch_commands"


def batch_response_pattern(config_id: str = "") -> str:
    return f"external-aggregator/{config_id}/*/response/batch_commands"


def register_participant(name: str) -> str:
    """Asset (by name) or market (by slug) registration request."""
    return f"{name}/register_participant"


def register_participant_response(name: str) -> str:
    return f"{name}/response/register_participant"


def asset_events(name: str, event: str) -> str:
    """Per-asset / per-market event channel (``<name>/events/<market|tick|finish>``)."""
    return f"{name}/events/{event}"


def sim_control(command: str, config_id: str = "") -> str:
    """``/pause``, ``/resume``, ``/stop`` (``<config_id>/<command>`` when hosted)."""
    return f"{config_id}/{command}"


def sim_control_response(command: str, config_id: str = "") -> str:
    return f"{config_id}/response/{command}"


_AGG_FROM_CHANNEL = re.compile(
    r"^external-aggregator/[^/]*/([^/]+)/(events/all|response/batch_commands)$"
)


def aggregator_of(channel: str | bytes) -> str | None:
    """The aggregator uuid in an events or batch-response channel name, else None."""
    if isinstance(channel, bytes):
        channel = channel.decode()
    m = _AGG_FROM_CHANNEL.match(channel)
    return m.group(1) if m else None


def slugify(name: str) -> str:
    """A market's name as gsy-e slugs it: ``House 2`` -> ``house-2``, ``PV 1 (4kW)`` ->
    ``pv-1-4kw``, ``Straße 1`` -> ``strasse-1``.

    gsy-e uses python-slugify, which transliterates letters outside ASCII before it drops the
    rest: a hand-written rule that only keeps ``[a-z0-9]`` makes ``stra-e-1``, a channel gsy-e
    never listens on.
    """
    return _slugify(name)
