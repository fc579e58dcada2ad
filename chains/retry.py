"""The one retry layer: which failures are transient, and how long to wait.

Used by ``ManagedChatModel`` around each single model request (never around a
batch: ``Runnable.with_retry`` on a batch can hand one input's output to
another).  The SDK's own retries are switched off (``max_retries=0``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chains.errors import ProviderError

if TYPE_CHECKING:  # tenacity is imported only when a request is actually retried
    from tenacity import RetryCallState

RETRYABLE_STATUSES = frozenset({408, 409, 429})
# Transport failures by class name, for HTTP stacks we do not import (httpx, httpx2, aiohttp).
_CONNECTION_ERRORS = frozenset(
    {
        "ConnectError",
        "ReadError",
        "WriteError",
        "RemoteProtocolError",
        "LocalProtocolError",
        "NetworkError",
        "ClientConnectionError",
        "ServerDisconnectedError",
        "ClientPayloadError",
    }
)
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_CAP = 30.0
DEFAULT_RETRY_AFTER_CAP = 60.0


class BrokenStreamError(Exception):
    """A streamed answer that cannot be trusted: it is a failed attempt, never a result."""


@dataclass(frozen=True)
class Failure:
    """What went wrong with one attempt, and whether trying again can help."""

    retryable: bool
    reason: str
    status: int | None = None
    retry_after: float | None = None
    code: str | None = None

    @property
    def throttled(self) -> bool:
        return self.status == 429


def _headers(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    return getattr(response, "headers", None) or {}


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - (now if now is not None else time.time()))


def _error_code(exc: BaseException) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        code = body.get("code") or (body.get("error") or {}).get("code")
        return str(code) if code else None
    return None


def classify(exc: BaseException) -> Failure:
    """Sort one attempt's exception into transient or final."""
    if isinstance(exc, BrokenStreamError):
        return Failure(True, f"broken stream: {exc}")
    if isinstance(exc, json.JSONDecodeError):
        return Failure(True, f"broken stream: a chunk was not valid JSON ({exc.msg})")
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    if isinstance(status, int):
        code = _error_code(exc)
        retry_after = parse_retry_after(_headers(exc))
        text = f"HTTP {status}"
        if code == "context_length_exceeded":
            return Failure(False, text + " context length exceeded", status, None, code)
        retryable = status in RETRYABLE_STATUSES or status >= 500
        return Failure(retryable, text, status, retry_after, code)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return Failure(True, "timed out")
    name = type(exc).__name__
    openai = sys.modules.get("openai")  # not imported: the error cannot be one of its
    if openai is not None:  # langchain-openai re-raises these as subclasses (OpenAITimeoutError, ...)
        if isinstance(exc, openai.APITimeoutError):
            return Failure(True, "timed out")
        if isinstance(exc, openai.APIConnectionError):
            return Failure(True, f"connection error ({name})")
    if name.endswith("Timeout") or name.endswith("TimeoutError"):  # httpx / httpx2 / other SDKs
        return Failure(True, "timed out")
    if isinstance(exc, (ConnectionError, OSError)) or name in _CONNECTION_ERRORS:
        return Failure(True, f"connection error ({name})")
    return Failure(False, f"{name}: {exc}")


_FIXES = {
    400: "the provider rejected the request; check the model parameters (--max-tokens, --temperature)",
    401: "the key was refused; check OPENAI_API_KEY",
    403: "the key has no access to this model; check --model and the key's project",
    404: "the model or endpoint was not found; check --model and --base-url",
    422: "the provider could not process the request; check the model parameters",
    429: "still rate limited after retries; lower --max-concurrency or set --rpm/--tpm",
}


def final_error(
    exc: BaseException, failure: Failure, attempts: int, *, timeout: float, base_url: str | None
) -> ProviderError:
    """The error an input fails with once no more attempts will be made."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if len(detail) > 300:
        detail = detail[:299] + "…"
    if failure.code == "context_length_exceeded":
        fix = "the prompt is longer than the model's context window; shorten the input or lower --max-tokens"
    elif failure.status is not None:
        fix = _FIXES.get(failure.status) or (
            "the server kept failing; try again later or lower --max-concurrency"
            if failure.status >= 500
            else "check the request"
        )
    elif failure.reason == "timed out":
        fix = f"no answer within {timeout:g}s; raise --timeout or check the server"
    elif failure.reason.startswith("connection error"):
        where = base_url or "the provider"
        fix = f"could not reach {where}; check --base-url and that the server is running"
    elif failure.reason.startswith("broken stream"):
        fix = "the server kept cutting the stream; try --no-stream or try again later"
    else:
        fix = ""
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    message = f"{failure.reason}{tries}: {detail}"
    if fix:
        message += f" ({fix})"
    return ProviderError(
        message,
        status=failure.status,
        retryable=failure.retryable,
        attempts=attempts,
        retry_after=failure.retry_after,
    )


class BackoffWait:
    """tenacity wait strategy: exponential backoff with full jitter, or the server's Retry-After."""

    def __init__(
        self,
        base: float = DEFAULT_BACKOFF_BASE,
        cap: float = DEFAULT_BACKOFF_CAP,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
    ) -> None:
        self.base = base
        self.cap = cap
        self.retry_after_cap = retry_after_cap

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            retry_after = classify(exc).retry_after
            if retry_after is not None:
                return min(retry_after, self.retry_after_cap)
        # full jitter: uniform between 0 and the capped exponential step
        return random.uniform(0.0, min(self.cap, self.base * 2 ** (state.attempt_number - 1)))
