"""The project's error hierarchy.

Every error says what was received and what to do about it, in one line.  The
CLI maps ``exit_code`` to its process exit status; the server answers a failure
with ``http_answer(exc)`` (status and headers), beside the classes it maps.
Nothing here imports LangChain.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple


class ChainRunnerError(Exception):
    """Base class: a problem the user can fix, reported as one clear line."""

    exit_code = 2
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ChainRunnerError):
    """The command line or settings are wrong (exit 2)."""


class PromptSpecError(ChainRunnerError):
    """A prompt file is invalid: names the file, the field and the fix."""

    http_status = 500

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        where = f"{file}: {field}: " if field else f"{file}: "
        super().__init__(where + problem)


class UnknownChainError(ChainRunnerError):
    """No chain has this name."""

    http_status = 404

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown chain {name!r}; known chains: {listing} (add prompts/<name>.yaml to create one)")


class InputError(ChainRunnerError):
    """An input (a row, a file, a request body) does not fit the chain."""

    http_status = 422


class ModelConfigError(UsageError):
    """The model spec, base URL or key is unusable."""


class ProviderError(ChainRunnerError):
    """The model provider answered with an error (after any retries).

    ``status`` is the HTTP status when there was one; ``retryable`` says whether
    the runner considers the failure transient.
    """

    exit_code = 1
    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.attempts = attempts
        self.retry_after = retry_after


class BudgetExceededError(ChainRunnerError):
    """The run's cost budget would be exceeded; the input was not run."""

    exit_code = 1
    http_status = 402


class PayloadTooLarge(ChainRunnerError):
    """A request is over the server's size limits (body bytes, batch length)."""

    http_status = 413


# ------------------------------------------------------------------ failures as HTTP answers

DEFAULT_RETRY_AFTER_S = 5
"""A provider's 429 without a usable wait is answered with ``Retry-After`` this many seconds."""

_OUTPUT_PARSER = ("langchain_core.exceptions", "OutputParserException")
"""LangChain's parser failure, named rather than imported: the model answered, but not in the declared shape."""


class HttpAnswer(NamedTuple):
    """How the server answers a failed input: ``status``, ``headers`` and whether the message is for the client
    (False for a failure nobody foresaw: its text may be an internal detail, so it goes to the server log)."""

    status: int
    headers: dict[str, str]
    explained: bool = True


def http_answer(exc: BaseException) -> HttpAnswer:
    """The HTTP answer to an input that failed with ``exc``, as ``exit_code`` is the CLI's.

    A provider's 429 is the server's 503 with ``Retry-After`` (the client should come back, not give up);
    the project's errors have their ``http_status``; a model answer the output parser refused is a 502 (a
    bad upstream answer); anything else is a 500.
    """
    if isinstance(exc, ProviderError) and exc.status == 429:
        return HttpAnswer(503, {"Retry-After": str(_retry_after_s(exc.retry_after))})
    if isinstance(exc, ChainRunnerError):
        return HttpAnswer(exc.http_status, {})
    if any((cls.__module__, cls.__qualname__) == _OUTPUT_PARSER for cls in type(exc).__mro__):
        return HttpAnswer(502, {})
    return HttpAnswer(500, {}, explained=False)


def _retry_after_s(wait: float | None) -> int:
    """Whole seconds, at least one; the default when the provider sent no finite wait."""
    if wait is None or not math.isfinite(wait):
        return DEFAULT_RETRY_AFTER_S
    return max(1, math.ceil(wait))


# ------------------------------------------------------------------ outside data in one line

SHOWN_CHARS = 60
"""Text from outside (a key, a value, a name) is shown in an error up to this many characters."""


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """Text from outside as it may appear in an error: one line, at most ``limit`` characters.

    Non-printable text is shown escaped (``\\n``), so a key or value from a file can
    neither break the one-line rule nor fill the terminal.
    """
    flat = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def one_line(message: str, limit: int = 200) -> str:
    """Another library's message (PyYAML, jsonschema, pydantic) on one line: it may quote a stretch of the file."""
    return " ".join(message.split())[:limit]


def json_path(parts: Iterable[str | int], root: str = "") -> str:
    """Where a value sits in a document: ``("messages", 1, "content")`` -> ``messages[1].content``.

    Integers are list indexes (``[1]``), anything else a key (``.content``, no
    dot first); ``root`` (``$``, ``output.schema``) goes in front.  Parts are
    shown as given: clip keys from outside first.
    """
    pieces = [root]
    started = bool(root)
    for part in parts:
        piece = f"[{part}]" if isinstance(part, int) else (f".{part}" if started else str(part))
        started = started or bool(piece)
        pieces.append(piece)
    return "".join(pieces)
