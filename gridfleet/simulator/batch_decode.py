"""BATCHED messages of the common shape decoded strictly, straight into structs.

A fleet's batch is almost always bids and offers with the keys the fast path takes
(:data:`batch.ORDER_KEYS`). msgspec decodes such a message into :class:`Order` structs faster
than ``orjson.loads`` builds dicts, and they are cheaper to free; the fast path then needs no key
or type checks. Anything else (another command, an unknown key, a bool or a too large int where a
number is, a ``replace_existing`` that is not a bool, a lone command not in a list, a transaction
id that is not a string, ...) fails to decode here and is read by ``orjson.loads`` as before.

The dicts stay the reference: the general path and error answers (which quote a command's keys
in the order sent) read :meth:`Typed.as_dict`, ``orjson.loads`` of the same bytes. Every message
this decoder takes, orjson takes too, with the same values for these fields and the same keys in
the same order (duplicate keys: the last value, at the first key's place, in both);
tests/simulator/test_batch_decode.py checks that.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson

# ints the fast path takes (exact as float64); larger ones fail the decode: orjson reads ints
# beyond 64 bits as floats, and the general path decides about them
_Int = Annotated[int, msgspec.Meta(gt=-(2**53), lt=2**53)]


class Order(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A bid or an offer of the common shape (absent and ``null`` ``time_slot`` alike: None)."""

    type: Literal["bid", "offer"]
    energy: _Int | float
    price: _Int | float
    replace_existing: bool = True
    time_slot: str | None = None
    transaction_id: str | None = None


class _Batch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    batch_commands: dict[str, list[Order]]
    type: str | None = None
    transaction_id: str | None = None
    aggregator_uuid: str | None = None


_DECODER = msgspec.json.Decoder(_Batch)


class Typed:
    """A BATCHED message of the common shape: its commands as :class:`Order` structs, and the
    message as orjson reads it, decoded when first asked for. ``get`` answers as that dict's."""

    __slots__ = ("_dict", "aggregator_uuid", "commands", "raw", "transaction_id")

    def __init__(self, msg: _Batch, raw: bytes) -> None:
        self.commands = msg.batch_commands
        self.transaction_id = msg.transaction_id
        self.aggregator_uuid = msg.aggregator_uuid
        self.raw = raw
        self._dict: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """``orjson.loads`` of the message (what the general path reads)."""
        if self._dict is None:
            self._dict = orjson.loads(self.raw)
        return self._dict

    def get(self, key: str, default: Any = None) -> Any:
        """``as_dict().get(key, default)``, the envelope's ids without decoding again."""
        if default is None and key == "transaction_id":
            return self.transaction_id
        if default is None and key == "aggregator_uuid":
            return self.aggregator_uuid
        return self.as_dict().get(key, default)


def decode_batch(raw: bytes) -> Typed | None:
    """The message decoded strictly; None when it is not of the common shape (or not JSON)."""
    try:
        return Typed(_DECODER.decode(raw), raw)
    except msgspec.DecodeError:  # ValidationError is one
        return None
