"""A record on its way back from a Ray worker: plain data out, a ``Record`` again on the driver.

A ``Record`` holds the exception its input failed with, and exceptions from LangChain or an SDK may not pickle
(or may drag a whole HTTP response along).  So a worker sends only what ``Record.to_dict`` shows (the output,
the JSON-safe error and the metrics); the driver already holds the input, its index and its key, and rebuilds
the exception from the error's type when it is one of the project's own (the server answers those by class),
else leaves it out.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from chains import errors
from chains.engine.execution import Record
from chains.engine.metrics import ITEM_FIELDS, ItemMetrics
from chains.errors import ChainRunnerError, ProviderError

Wire = dict[str, Any]
"""``{"output": ..., "error": {...} | None, "metrics": {...}}``: one finished input, as a worker sends it."""


def to_wire(record: Record) -> Wire:
    """What the driver needs of a worker's record (the metrics unrounded: the summary sums them).  A shallow copy of
    the metrics' fields: the record is pickled right after and never used again here (``dataclasses.asdict`` would
    deep-copy them first, a few % of a worker's CPU on the offline model)."""
    metrics = record.metrics
    return {"output": record.output, "error": record.error, "metrics": {n: getattr(metrics, n) for n in ITEM_FIELDS}}


def from_wire(index: int, value: Any, key: str | None, data: Wire) -> Record:
    """The worker's record again, for the input the driver sent (``value``, ``index``, ``key``)."""
    error = data.get("error")
    metrics = data.get("metrics") or {}
    item = ItemMetrics(**{name: metrics[name] for name in ITEM_FIELDS if name in metrics})
    exception = rebuild_error(error) if isinstance(error, dict) else None
    return Record(
        index, value, data.get("output"), error if isinstance(error, dict) else None, item, key, exception=exception
    )


def rebuild_error(error: dict[str, Any]) -> ChainRunnerError | None:
    """The project's error named by ``error["type"]`` with its message (and a provider error's status and
    attempts); None for any other type (a LangChain or SDK error stays a description)."""
    name, message = error.get("type"), error.get("message")
    cls = getattr(errors, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, ChainRunnerError)):
        return None
    text = message if isinstance(message, str) else str(name)
    if issubclass(cls, ProviderError):
        status, attempts = error.get("status"), error.get("attempts")
        return cls(text, status=status if _is_int(status) else None, attempts=attempts if _is_int(attempts) else 1)
    exc = cls.__new__(cls)  # some take other arguments (a file, a field): the message is what was shown
    ChainRunnerError.__init__(exc, text)
    return exc


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["Wire", "from_wire", "rebuild_error", "to_wire"]
