"""LangSmith tracing that cannot slow a run down.

With tracing on (``LANGSMITH_TRACING=true``) and its endpoint unreachable, LangChain's tracer
retries every batch of runs in the background and the process waits for it at exit: a 1 s run
took 13-19 s to end, with a screenful of warnings.  ``disable_unreachable_tracing`` probes the
endpoint once (a TCP connect, bounded by ``timeout``) before a run; when nothing answers, it
switches tracing off for this process and returns the one line to say so.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://api.smith.langchain.com"
_TRACING_VARS = ("LANGSMITH_TRACING", "LANGSMITH_TRACING_V2", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING")
_ENDPOINT_VARS = ("LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT")


def tracing_requested(env: MutableMapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(env.get(name, "").strip().lower() == "true" for name in _TRACING_VARS)


def tracing_endpoint(env: MutableMapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return next((env[name] for name in _ENDPOINT_VARS if env.get(name)), DEFAULT_ENDPOINT)


def reachable(url: str, timeout: float) -> bool:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if not parts.hostname:
        return False
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def disable_unreachable_tracing(timeout: float = 1.0, env: MutableMapping[str, str] | None = None) -> str | None:
    """Turn tracing off when it is on but its endpoint does not answer; the warning to show, if any."""
    env = os.environ if env is None else env
    if not tracing_requested(env):
        return None
    endpoint = tracing_endpoint(env)
    if reachable(endpoint, timeout):
        return None
    for name in _TRACING_VARS:
        if name in env:
            env[name] = "false"
    return (
        f"warning: LangSmith tracing is on but {endpoint} does not answer; tracing is off for this run "
        "(check LANGSMITH_ENDPOINT, or unset LANGSMITH_TRACING)"
    )
