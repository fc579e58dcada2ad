"""The one retry layer: which failures are transient, and how long to wait.

Used by ``ManagedChatModel`` around each single model request (never around a
batch: ``Runnable.with_retry`` on a batch can hand one input's output to
another).  The SDK's own retries are switched off (``max_retries=0``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chains.engine.headers import DEFAULT_RETRY_AFTER_CAP, parse_retry_after
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
DEFAULT_JITTER_FLOOR = 0.75


class BrokenStreamError(Exception):
    """A streamed answer that cannot be trusted: it is a failed attempt, never a result."""


class NoAnswerError(Exception):
    """A successful response that holds no answer (e.g. ``"choices": []``): a failed attempt."""


@dataclass(frozen=True)
class Failure:
    """What went wrong with one attempt, and whether trying again can help."""

    retryable: bool
    reason: str
    status: int | None = None
    retry_after: float | None = None
    code: str | None = None
    detail: str | None = None
    """The provider's own words, when the exception's text is not (e.g. an error object's message)."""
    provider: bool = True
    """False for an exception that is no provider failure (a bug, a budget stop): it is kept as it is."""

    @property
    def throttled(self) -> bool:
        return self.status == 429


def _headers(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    return getattr(response, "headers", None) or {}


def _error_object(body: Any) -> dict[str, Any] | None:
    """An OpenAI-style error body's error object: ``{"error": {...}}`` or the object itself."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    return error if isinstance(error, dict) else body


def _error_code(exc: BaseException) -> str | None:
    body = getattr(exc, "body", None)
    error = _error_object(body)
    if error is None:
        return None
    code = error.get("code") or (body.get("code") if isinstance(body, dict) else None)
    return str(code) if code else _anthropic_type(body)


def _anthropic_type(body: Any) -> str | None:
    """The error type of Anthropic's envelope ``{"type": "error", "error": {"type": "overloaded_error", ...}}``."""
    if not isinstance(body, dict) or body.get("type") != "error" or not isinstance(body.get("error"), dict):
        return None
    kind = body["error"].get("type")
    return kind if isinstance(kind, str) and kind else None


# Anthropic's error types and their statuses: a stream that fails after its 200 says which in an ``error`` event.
_ANTHROPIC_STATUS = {"rate_limit_error": 429, "api_error": 500, "overloaded_error": 529, "timeout_error": 504}
_PROMPT_TOO_LONG = re.compile(r"prompt is too long", re.IGNORECASE)


def _error_text(exc: BaseException) -> str:
    """The provider's own words: the error body's type and message, else the exception's text."""
    error = _error_object(getattr(exc, "body", None))
    if error is None:
        return _safe_text(exc)
    return f"{error.get('type') or ''} {error.get('message') or ''}"


# A 5xx whose body says the request itself is invalid cannot succeed on retry (llama.cpp answers an
# unsupported response_format with a 500 carrying pydantic's "1 validation error: ...").
_REQUEST_INVALID = re.compile(r"invalid_request_error|\b\d+ validation errors?\b", re.IGNORECASE)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it (``__cause__`` / ``__context__``), outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _refusal(exc: BaseException) -> BaseException | None:
    """The refused connection behind a transport error, if that is what it was (the aiohttp
    transport of the OpenAI SDK reports a refusal as a *timeout* whose cause is the refusal)."""
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError) or type(cause).__name__ == "ClientConnectorError":
            return cause
        if isinstance(cause, OSError) and cause.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
            return cause
    return None


def _body_error(exc: BaseException) -> dict[str, Any] | None:
    """The error object of an answer that came back with no HTTP error status.

    langchain-openai raises ``ValueError(body["error"])`` for a 200 whose body is an error; the
    OpenAI SDK raises a status-less ``APIError`` for an ``{"error": ...}`` event in a stream.
    """
    if isinstance(exc, ValueError) and exc.args and isinstance(exc.args[0], dict):
        return exc.args[0]
    for sdk in _sdks():
        if isinstance(exc, sdk.APIError) and not isinstance(exc, sdk.APIStatusError):
            return _error_object(getattr(exc, "body", None))
    return None


def _sdks() -> list[Any]:
    """The provider SDKs already imported (an exception cannot be one of an SDK that is not)."""
    return [module for name in ("openai", "anthropic") if (module := sys.modules.get(name)) is not None]


_TRANSIENT_BODY = re.compile(r"server_error|overloaded|rate_limit|timeout|unavailable|internal|try again", re.I)


def classify(exc: BaseException) -> Failure:
    """Sort one attempt's exception into transient or final.  Never raises: whatever a provider
    sends (odd bodies, odd headers) is a ``Failure``, so one strange answer cannot stop a run."""
    try:
        return _classify(exc)
    except Exception:  # an exception object that misbehaves when inspected: a final failure, not a crash
        return Failure(False, f"{type(exc).__name__}: {_safe_text(exc)}", provider=False)


def _safe_text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


def _classify(exc: BaseException) -> Failure:
    if isinstance(exc, BrokenStreamError):
        return Failure(True, f"broken stream: {exc}")
    if isinstance(exc, NoAnswerError):
        return Failure(True, "no answer", detail=str(exc))
    if isinstance(exc, json.JSONDecodeError):
        return Failure(True, f"broken stream: a chunk was not valid JSON ({exc.msg})")
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    if isinstance(status, int):
        code = _error_code(exc)
        retry_after = parse_retry_after(_headers(exc))
        anthropic = _anthropic_type(getattr(exc, "body", None))
        if status < 400 and anthropic in _ANTHROPIC_STATUS:  # an error event in a stream answered 200
            status = _ANTHROPIC_STATUS[anthropic]
        text = f"HTTP {status}" + (f" {anthropic}" if anthropic in _ANTHROPIC_STATUS else "")
        if status == 400 and _PROMPT_TOO_LONG.search(_error_text(exc)):  # Anthropic's context-length refusal
            code = "context_length_exceeded"
        if code == "context_length_exceeded":
            return Failure(False, text + " context length exceeded", status, None, code)
        if status >= 500 and _REQUEST_INVALID.search(_error_text(exc)):
            return Failure(False, text + " request invalid for this server", status, None, code or "invalid_request")
        retryable = status in RETRYABLE_STATUSES or status >= 500
        return Failure(retryable, text, status, retry_after, code)
    body = _body_error(exc)
    if body is not None:
        said = " ".join(str(body.get(k) or "") for k in ("type", "code", "message")).strip()
        message = str(body.get("message") or said or "no message")
        transient = bool(_TRANSIENT_BODY.search(said)) and not _REQUEST_INVALID.search(said)
        return Failure(transient, "the provider answered with an error", detail=message)
    name = type(exc).__name__
    refusal = _refusal(exc)
    if refusal is not None:
        return Failure(True, "connection refused", detail=_safe_text(refusal) or type(refusal).__name__)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return Failure(True, "timed out")
    for sdk in _sdks():  # the LangChain integrations re-raise these as subclasses (OpenAITimeoutError, ...)
        if isinstance(exc, sdk.APITimeoutError):
            return Failure(True, "timed out")
        if isinstance(exc, sdk.APIConnectionError):
            return Failure(True, f"connection error ({name})")
    if name.endswith("Timeout") or name.endswith("TimeoutError"):  # httpx / httpx2 / other SDKs
        return Failure(True, "timed out")
    if isinstance(exc, (ConnectionError, OSError)) or name in _CONNECTION_ERRORS:
        return Failure(True, f"connection error ({name})")
    return Failure(False, f"{name}: {exc}", provider=False)


_FIXES = {
    400: "the provider rejected the request; check the model parameters (--max-tokens, --temperature)",
    401: "the key was refused; check OPENAI_API_KEY",
    403: "the key has no access to this model; check --model and the key's project",
    404: "the model or endpoint was not found; check --model and --base-url",
    422: "the provider could not process the request; check the model parameters",
    429: "still rate limited after retries; lower --max-concurrency or set --rpm/--tpm",
}


def _detail(exc: BaseException, failure: Failure) -> str:
    """What the provider said, in one line: an error body's message rather than a dict's repr."""
    text = failure.detail
    if text is None:
        error = _error_object(getattr(exc, "body", None))
        if error is not None and error.get("message"):
            text = str(error["message"])
    text = " ".join((text if text is not None else _safe_text(exc)).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def _fix(failure: Failure, timeout: float, base_url: str | None) -> str:
    reason = failure.reason
    if failure.code == "context_length_exceeded":
        return "the prompt is longer than the model's context window; shorten the input or lower --max-tokens"
    if failure.code == "authentication_error":  # Anthropic's word for a refused key
        return "the key was refused; check ANTHROPIC_API_KEY"
    if failure.code == "invalid_request" or reason.endswith("request invalid for this server"):
        return (
            "the server cannot do this request and retrying will not help (llama.cpp, for one, rejects "
            "response_format json_schema); use a chain with text output or another server"
        )
    if failure.status is not None:
        return _FIXES.get(failure.status) or (
            "the server kept failing; try again later or lower --max-concurrency"
            if failure.status >= 500
            else "check the request"
        )
    if reason == "timed out":
        return f"no complete answer within {timeout:g}s; raise --timeout or check the server"
    if reason.startswith("connection"):
        return f"could not reach {base_url or 'the provider'}; check --base-url and that the server is running"
    if reason.startswith("broken stream"):
        return "the server kept cutting the stream; try --no-stream or try again later"
    if reason == "no answer":
        return "the provider kept answering without an answer; try again later"
    if reason == "the provider answered with an error":
        return (
            "try again later"
            if failure.retryable
            else "the provider refused the request; check --model and the parameters"
        )
    return ""


def final_error(
    exc: BaseException,
    failure: Failure,
    attempts: int,
    *,
    timeout: float,
    base_url: str | None,
    secrets: Sequence[str] = (),
) -> ProviderError:
    """The error an input fails with once no more attempts will be made; ``secrets`` (the API
    keys) are redacted, since providers echo a refused key in their message."""
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    message = f"{failure.reason}{tries}: {_detail(exc, failure)}"
    fix = _fix(failure, timeout, base_url)
    if fix:
        message += f" ({fix})"
    return ProviderError(
        redact(message, secrets),
        status=failure.status,
        retryable=failure.retryable,
        attempts=attempts,
        retry_after=failure.retry_after,
    )


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret (at least 4 characters long) replaced by ``[redacted]``."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


class BackoffWait:
    """tenacity wait strategy: exponential backoff with jitter, or the server's Retry-After (capped).

    The jitter keeps a floor of ``floor`` times the step (openai-python's choice, 75 %): full
    jitter (0..step) can retry a failed attempt within a millisecond, before the server has even
    finished with it, and a retry that races its own failed attempt can be answered wrongly.
    """

    def __init__(
        self,
        base: float = DEFAULT_BACKOFF_BASE,
        cap: float = DEFAULT_BACKOFF_CAP,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
        floor: float = DEFAULT_JITTER_FLOOR,
    ) -> None:
        self.base = base
        self.cap = cap
        self.retry_after_cap = retry_after_cap
        self.floor = floor

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            return self.for_failure(classify(exc), state.attempt_number)
        return self.delay(state.attempt_number)

    def for_failure(self, failure: Failure, attempt: int) -> float:
        """The wait after failed attempt ``attempt``: the server's advice (capped), else the backoff."""
        if failure.retry_after is not None:
            return min(failure.retry_after, self.retry_after_cap)
        return self.delay(attempt)

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based) when the server gave no advice."""
        step = min(self.cap, self.base * 2 ** min(attempt - 1, 64))
        return random.uniform(self.floor * step, step)


def flex_unavailable(exc: BaseException) -> bool:
    """OpenAI's flex tier answering 429 "Resource Unavailable": no flex capacity now (not the key's rate limit).

    Retried with backoff like any 429; with ``--flex-fallback`` sent at the standard tier instead.
    """
    failure = classify(exc)
    if failure.status != 429:
        return False
    words = " ".join(filter(None, (failure.code, failure.detail, _safe_text(exc)))).lower()
    return "resource_unavailable" in words or "resource unavailable" in words
