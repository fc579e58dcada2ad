"""Fault rules: which faults the server can inject, and one rule's matching state.

A rule names a fault kind (an HTTP error status, a reset, a cut or stalled stream, an answer
that is not an answer), which requests it matches (``match`` in the last user message,
``stream``), how many times it fires (``times``) and the details of its response.
``RuleBook`` is the python API over a server's list of rules (the chat rules' and the batch rules').
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

__all__ = [
    "FAULT_KINDS",
    "MID_STREAM_KINDS",
    "ODD_KINDS",
    "STATUS_ERRORS",
    "STATUS_KINDS",
    "Rule",
    "RuleBook",
    "rule_kwargs",
]

# status -> (error type, error code, message)
STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (injected fault)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: test. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    403: ("permission_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    408: ("timeout", "request_timeout", "Request timed out."),
    409: ("conflict_error", "conflict", "Conflict (injected fault)."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests (injected fault). Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: (
        "server_error",
        "service_unavailable",
        "The server is overloaded or not ready yet.",
    ),
}
STATUS_KINDS = frozenset(str(s) for s in STATUS_ERRORS)
MID_STREAM_KINDS = frozenset({"reset_mid_stream", "truncate", "malformed"})
# Answers that are not answers: a 200 whose body has no choices or is an error object, a 500 whose
# body is a request validation error (llama.cpp on an unsupported response_format), and an answer that
# never ends (bytes keep trickling in, so no read ever times out).
ODD_KINDS = frozenset({"empty_choices", "error_body", "validation_500", "endless", "reply"})
"""``reply``: a 200 whose answer is ``message``, word for word (e.g. JSON that breaks a schema)."""
FAULT_KINDS = frozenset(STATUS_KINDS | MID_STREAM_KINDS | ODD_KINDS | {"context_length", "reset", "stall"})
RULE_KEYS = frozenset(
    {
        "fault",
        "match",
        "times",
        "retry_after",
        "retry_after_ms",
        "after_chunks",
        "stall_s",
        "stream",
        "message",
        "headers",
        "error_type",
        "model",
    }
)


def rule_kwargs(data: Any, keys: frozenset[str], what: str = "fault rule") -> dict[str, Any]:
    """A rule sent as JSON, checked: an object with a 'fault' key and no key but ``keys``."""
    if not isinstance(data, dict) or "fault" not in data:
        raise ValueError(f"a {what} must be an object with a 'fault' key")
    unknown = set(data) - keys
    if unknown:
        raise ValueError(f"unknown {what} key(s): {sorted(unknown)}")
    return data


class RuleBook:
    """The python API over a server's fault rules: ``_rules`` in order, guarded by ``_lock``, each a ``_rule_type``
    (a class with ``from_dict`` and ``to_dict``)."""

    _lock: threading.Lock
    _rules: list[Any]
    _rule_type: ClassVar[Any]

    def add_fault(self, fault: str, match: str | None = None, times: int | None = None, **kw: Any) -> dict[str, Any]:
        """Append one rule; ``kw``: the details its kind takes (see ``Rule``, ``BatchRule``). Returns it as a dict."""
        rule = self._rule_type.from_dict({"fault": fault, "match": match, "times": times, **kw})
        with self._lock:
            self._rules.append(rule)
        return rule.to_dict()

    def add_faults(self, data: Any) -> None:
        """Append the rules of a control request (one rule object or a list of them): all of them, or none."""
        rules = [self._rule_type.from_dict(d) for d in (data if isinstance(data, list) else [data])]
        with self._lock:
            self._rules.extend(rules)

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_dict() for rule in self._rules]


class Rule:
    """One fault rule: what it injects, which requests it matches, and how often it has fired.

    The details (``FaultServer.add_fault`` kw): retry_after, retry_after_ms, after_chunks, stall_s, stream (only
    match streamed / non-streamed requests), message, error_type (the error body's ``type``), headers (sent
    verbatim: e.g. ``{"retry-after": "soon"}``), model (only requests for that model).
    """

    __slots__ = (
        "after_chunks",
        "applied",
        "error_type",
        "headers",
        "kind",
        "match",
        "message",
        "model",
        "remaining",
        "retry_after",
        "retry_after_ms",
        "stall_s",
        "stream",
        "times",
    )

    def __init__(
        self,
        fault: str,
        match: str | None = None,
        times: int | None = None,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        after_chunks: int | None = None,
        stall_s: float | None = None,
        stream: bool | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        error_type: str | None = None,
        model: str | None = None,
    ) -> None:
        kind = str(fault)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {fault!r}; expected one of {sorted(FAULT_KINDS)}")
        if times is not None and int(times) < 0:
            raise ValueError("times must be >= 0 or None")
        self.kind = kind
        self.match = None if match is None else str(match)
        self.times = None if times is None else int(times)
        self.remaining = self.times
        self.retry_after = None if retry_after is None else float(retry_after)
        self.retry_after_ms = None if retry_after_ms is None else float(retry_after_ms)
        if after_chunks is None and kind in MID_STREAM_KINDS:
            after_chunks = 1
        self.after_chunks = None if after_chunks is None else max(0, int(after_chunks))
        self.stall_s = 3600.0 if stall_s is None else float(stall_s)
        self.stream = None if stream is None else bool(stream)
        self.message = message
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}
        """Sent verbatim with the fault's response (e.g. a Retry-After of 'soon')."""
        self.error_type = error_type
        self.model = None if model is None else str(model)
        """Only requests for this model (the body's ``model``) match, when set."""
        self.applied = 0

    @classmethod
    def from_dict(cls, data: Any) -> Rule:
        return cls(**rule_kwargs(data, RULE_KEYS))

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault": self.kind,
            "match": self.match,
            "times": self.times,
            "remaining": self.remaining,
            "applied": self.applied,
            "retry_after": self.retry_after,
            "retry_after_ms": self.retry_after_ms,
            "after_chunks": self.after_chunks,
            "stall_s": self.stall_s,
            "stream": self.stream,
            "message": self.message,
            "headers": dict(self.headers),
            "error_type": self.error_type,
            "model": self.model,
        }
