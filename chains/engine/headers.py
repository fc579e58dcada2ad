"""Parsers of the waits servers send in headers: ``Retry-After``, ``retry-after-ms``, ``x-ratelimit-*``.

Header values are outside data: a server, a proxy or a bug can send anything (``soon``,
``1.5s``, an empty value, ``86400s``, ``inf``, a date in the year 99999).  Every parser here
returns a finite number of seconds or None ("no advice") and never raises; the waits a server
can impose are capped (``DEFAULT_RETRY_AFTER_CAP``), so no header can pause a run for a day.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from typing import Any

DEFAULT_RETRY_AFTER_CAP = 60.0
"""The longest wait a server's advice can impose on one request or on the run."""
MAX_HEADER_CHARS = 200
"""Longer header values are not a number of seconds, a duration or a date: ignored, never parsed."""

_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def header_seconds(value: Any) -> float | None:
    """A finite, non-negative number of seconds from a header value, or None."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or len(text) > MAX_HEADER_CHARS:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    Not capped here (the retry layer caps its sleep; the server passes the advice on).
    """
    try:
        ms = header_seconds(headers.get("retry-after-ms"))
        if ms is not None:
            return ms / 1000.0
        value = headers.get("retry-after")
    except Exception:  # headers of an unknown kind: no advice
        return None
    seconds = header_seconds(value)
    if seconds is not None or value is None:
        return seconds
    text = str(value).strip()
    if not text or len(text) > MAX_HEADER_CHARS:
        return None
    try:
        delay = email.utils.parsedate_to_datetime(text).timestamp() - (now if now is not None else time.time())
    except (ValueError, TypeError, OverflowError, IndexError):
        return None
    return max(0.0, delay) if math.isfinite(delay) else None


def parse_reset(text: Any, cap: float = DEFAULT_RETRY_AFTER_CAP) -> float | None:
    """OpenAI's ``x-ratelimit-reset-*`` durations (``1s``, ``6m0s``, ``20ms``, ``0.5s``, plain seconds),
    capped at ``cap``: a reset of ``86400s`` pauses new requests for ``cap`` seconds, then the
    server is asked again."""
    seconds = header_seconds(text)
    if seconds is None:
        if text is None or len(str(text)) > MAX_HEADER_CHARS:
            return None
        parts = _DURATION.findall(str(text))
        if not parts:
            return None
        seconds = sum(float(value) * _UNITS[unit] for value, unit in parts)
    return min(seconds, cap) if math.isfinite(seconds) else None
