"""Secrets out of anything shown or written: one :func:`redact` for every URL, argv and message.

The command line, the simulator, its reports and the logs all pass text through it before it
leaves the process, so a password given in a URL (``redis://:PW@host``, ``?password=PW``) never
reaches a terminal, a log line or a report file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# ``scheme://user:password@``: the password is everything between the first ':' after the
# scheme and the '@' (no whitespace, no '@': a URL-encoded password has neither).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<secret>[^@\s]+)@")
# ``?password=PW`` / ``&password=PW`` (redis-py takes the password from the query too).
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<secret>[^&#\s]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URL password replaced by ``***`` (any text: a URL, a command line,
    an exception message); everything else unchanged."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_argv(argv: Iterable[str]) -> str:
    """A command line fit for a report or a log: its words joined by spaces, redacted."""
    return redact(" ".join(argv))
