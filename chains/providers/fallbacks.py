"""Fallbacks: an input whose request failed for good, for a reason another model may not share, is tried on the next.

``--fallback-model PROVIDER:MODEL`` (repeatable, in order) builds one more ``ManagedChatModel`` per model, each with
its own retries and prices, sharing the run's limits; ``ManagedChatModel.fallback`` points at the next.  Worth
another model: the context is too long for this one (OpenAI's ``context_length_exceeded``, Anthropic's "prompt is
too long"), a content filter refused, the model does not exist (404), its retries were spent on 429s, 5xx or
connection failures.  Never: a request refused for itself or for its key
(other 400s, 401, 403, 422), which any model would refuse too.  The record says which model answered
(``metrics.model``) and why the earlier ones did not (``metrics.fallbacks``); the resume key stays the input's.
"""

from __future__ import annotations

import logging

from chains.engine.headers import DEFAULT_RETRY_AFTER_CAP
from chains.engine.metrics import current_item
from chains.engine.retry import classify
from chains.errors import ProviderError, clip

log = logging.getLogger("chains.requests")

_OTHER_MODEL_CODES = frozenset(
    {"context_length_exceeded", "content_filter", "model_not_found", "string_above_max_length"}
)


def fallback_reason(exc: ProviderError, hold_cap: float = DEFAULT_RETRY_AFTER_CAP) -> str | None:
    """Why another model may answer where this one did not; None: it would be refused the same way."""
    cause = exc.__cause__ if isinstance(exc.__cause__, BaseException) else exc
    failure = classify(cause)
    text = str(exc).lower()  # a batch row's error names its code only in its words
    code = failure.code or next((c for c in sorted(_OTHER_MODEL_CODES) if c in text), "")
    if code in _OTHER_MODEL_CODES:
        return code
    if "context length" in text or "prompt is too long" in text:
        return "context_length_exceeded"
    status = exc.status
    if status == 404:
        return "model not found"
    if status == 429 and exc.attempts == 1 and (exc.retry_after or 0.0) > hold_cap:
        return "a long hold"  # not waited out: ManagedChatModel._worth_retrying
    if exc.retryable and (status is None or status == 429 or status >= 500):
        return "retries exhausted"
    return None


def note_fallback(model: str, exc: ProviderError, reason: str, next_model: str) -> None:
    """One line in the log, and the input's metrics keep why this model did not answer."""
    item = current_item()
    if item is not None:
        item.fallbacks.append({"model": model, "reason": reason, "error": clip(str(exc), 300)})
    log.info("fallback from %s to %s: %s", model, next_model, reason)
