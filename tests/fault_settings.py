"""The fault server's settings (latency, chunks, rate limits) and the rate limiter they set.

``DEFAULT_SETTINGS`` names every setting; ``normalize_settings`` checks an update against it;
``Config`` is the precomputed view one request reads (swapped whole on configure, so a request
never sees half an update); ``RateLimiter`` is the server-side ``rpm_limit`` / ``tpm_limit``
window and the ``x-ratelimit-*`` headers it reports.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any

__all__ = ["DEFAULT_SETTINGS", "Config", "RateLimiter", "ceil_ms", "fmt_reset", "fmt_seconds", "normalize_settings"]

DEFAULT_SETTINGS: dict[str, Any] = {
    "latency_ms": 0.0,
    "latency_range_ms": None,
    "chunk_delay_ms": 0.0,
    "chunks": 8,
    "rpm_limit": None,
    "tpm_limit": None,
    "time_scale": 1.0,
    "send_ratelimit_headers": False,
    "models": ["fake-model"],
}


def ceil_ms(seconds: float) -> int:
    """Whole milliseconds, rounded up (so a client sleeping that long is never early)."""
    return max(0, math.ceil(seconds * 1000 - 1e-6))


def fmt_seconds(value: float) -> str:
    """Retry-After style number of seconds, rounded up to the ms: '2', '0.25', '0.001'."""
    ms = max(1, ceil_ms(value))
    whole, frac = divmod(ms, 1000)
    return str(whole) if not frac else f"{whole}.{frac:03d}".rstrip("0")


def fmt_reset(seconds: float) -> str:
    """OpenAI x-ratelimit-reset-* style duration, rounded up: '120ms', '1.5s', '6m0s'."""
    ms = ceil_ms(seconds)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return fmt_seconds(ms / 1000) + "s"
    minutes, secs = divmod(math.ceil(ms / 1000), 60)
    return f"{minutes}m{secs}s"


class Config:
    """Immutable, precomputed view of the settings (swapped atomically on configure)."""

    __slots__ = (
        "chunk_delay_s",
        "latency_range_s",
        "latency_s",
        "models",
        "pieces",
        "ratelimit_headers",
        "rpm",
        "settings",
        "tpm",
        "window_s",
    )

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.latency_s = float(settings["latency_ms"] or 0) / 1000.0
        rng = settings["latency_range_ms"]
        self.latency_range_s = (float(rng[0]) / 1000.0, float(rng[1]) / 1000.0) if rng else None
        self.chunk_delay_s = float(settings["chunk_delay_ms"] or 0) / 1000.0
        chunks = max(1, int(settings["chunks"]))
        self.pieces = tuple(f" t{i}" for i in range(1, chunks))
        self.rpm = settings["rpm_limit"]
        self.tpm = settings["tpm_limit"]
        self.window_s = 60.0 * float(settings["time_scale"])
        self.ratelimit_headers = bool(settings["send_ratelimit_headers"])
        self.models = tuple(settings["models"])

    def latency(self) -> float:
        if self.latency_range_s is not None:
            return random.uniform(*self.latency_range_s)
        return self.latency_s


def normalize_settings(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    unknown = set(updates) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown setting(s): {sorted(unknown)}")
    out = dict(base)
    for name, value in updates.items():
        if name in ("latency_ms", "chunk_delay_ms"):
            value = float(value or 0)
            if value < 0:
                raise ValueError(f"{name} must be >= 0")
        elif name == "latency_range_ms":
            if value is not None:
                lo, hi = (float(v) for v in value)
                if lo < 0 or hi < lo:
                    raise ValueError("latency_range_ms must be [lo, hi] with 0 <= lo <= hi")
                value = [lo, hi]
        elif name == "chunks":
            value = int(value)
            if value < 1:
                raise ValueError("chunks must be >= 1")
        elif name in ("rpm_limit", "tpm_limit"):
            if value is not None:
                value = int(value)
                if value < 1:
                    raise ValueError(f"{name} must be >= 1 or None")
        elif name == "time_scale":
            value = float(value)
            if value <= 0:
                raise ValueError("time_scale must be > 0")
        elif name == "send_ratelimit_headers":
            value = bool(value)
        elif name == "models":
            value = [str(m) for m in ([value] if isinstance(value, str) else value)]
        out[name] = value
    return out


class RateLimiter:
    """Sliding-window request/token counter. Only touched from the server loop."""

    __slots__ = ("events", "tokens")

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def _prune(self, now: float, window: float) -> None:
        events = self.events
        cutoff = now - window
        while events and events[0][0] <= cutoff:
            self.tokens -= events.popleft()[1]

    def admit(self, now: float, cfg: Config, tokens: int) -> tuple[str, float] | None:
        """Record the request, or return (limit kind, retry-after seconds) if over a limit."""
        window = cfg.window_s
        self._prune(now, window)
        events = self.events
        if cfg.rpm is not None and len(events) >= cfg.rpm:
            idx = len(events) - cfg.rpm  # the slot that has to expire
            return "requests", max(0.001, events[idx][0] + window - now)
        if cfg.tpm is not None and self.tokens + tokens > cfg.tpm:
            if tokens > cfg.tpm or not events:
                return "tokens", window
            need = self.tokens + tokens - cfg.tpm
            freed = 0
            for t, n in events:
                freed += n
                if freed >= need:
                    return "tokens", max(0.001, t + window - now)
            return "tokens", window
        events.append((now, tokens))
        self.tokens += tokens
        return None

    def headers(self, now: float, cfg: Config) -> dict[str, str]:
        self._prune(now, cfg.window_s)
        out: dict[str, str] = {}
        events = self.events
        oldest = events[0][0] + cfg.window_s - now if events else 0.0
        if cfg.rpm is not None:
            out["x-ratelimit-limit-requests"] = str(cfg.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, cfg.rpm - len(events)))
            out["x-ratelimit-reset-requests"] = fmt_reset(oldest)
        if cfg.tpm is not None:
            out["x-ratelimit-limit-tokens"] = str(cfg.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, cfg.tpm - self.tokens))
            out["x-ratelimit-reset-tokens"] = fmt_reset(oldest)
        return out
