"""LangSmith tracing that cannot slow a run down.

With tracing on (``LANGSMITH_TRACING=true``) and its endpoint unreachable, LangChain's tracer
retries every batch of runs in the background and the process waits for it at exit: a 1 s run
took 13-19 s to end, with a screenful of warnings.  ``disable_unreachable_tracing`` probes the
endpoint once (a TCP connect, bounded by ``timeout``) before a run; when nothing answers, it
switches tracing off for this process and returns the one line to say so.  The variables are
read (and switched off) by ``chains.settings``, where every variable the program reads is listed.
"""

from __future__ import annotations

import socket
from collections.abc import MutableMapping
from urllib.parse import urlsplit

from chains.settings import Environment, turn_tracing_off


def endpoint_address(url: str) -> tuple[str, int] | None:
    """The host and port to probe for ``url``, or None when it names none (e.g. ``http://[::1``, port 99999).

    The endpoint comes from the environment: a malformed one is an endpoint that does not answer, never an
    exception out of the run's first step.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def reachable(url: str, timeout: float) -> bool:
    address = endpoint_address(url)
    if address is None:
        return False
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except (OSError, ValueError):  # ValueError: a host the resolver refuses (a label over 63 characters, a NUL)
        return False


def disable_unreachable_tracing(timeout: float = 1.0, env: MutableMapping[str, str] | None = None) -> str | None:
    """Turn tracing off when it is on but its endpoint does not answer; the warning to show, if any."""
    seen = Environment.read(env)
    if not seen.tracing or reachable(seen.tracing_endpoint, timeout):
        return None
    turn_tracing_off(env)
    return (
        f"warning: LangSmith tracing is on but {_shown(seen.tracing_endpoint)} does not answer; tracing is off for "
        "this run (check LANGSMITH_ENDPOINT, or unset LANGSMITH_TRACING)"
    )


def _shown(endpoint: str) -> str:
    """The endpoint as given, unless it would break the one line (control characters) or flood it."""
    if len(endpoint) <= 120 and endpoint.isprintable():
        return endpoint
    return repr(endpoint[:119] + "…" if len(endpoint) > 120 else endpoint)
