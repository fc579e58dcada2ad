"""``--shard I/N``: which inputs one of N independent runs takes, so that the N runs cover every input once.

For schedulers that start plain processes (Slurm arrays, Kubernetes jobs, a shell loop): run ``I = 0 .. N-1``,
each with its own ``--output``, then ``merge`` the outputs.  Nothing is shared between the runs, so the split must
come from the input alone: an input belongs to shard ``sha256(key)[:8] mod N``, where ``key`` is its resume key
(``chains.engine.resume.input_key``: chain, prompt files, input, model, parameters).

Why the resume key and a cryptographic hash, not a line number or Python's ``hash()``: ``hash()`` of a string
changes with every process (``PYTHONHASHSEED``), so two shard runs would disagree; a line number changes when
the file is edited or re-sorted, the key does not, so ``--resume`` of one shard keeps finding its own records.
A row that a reader could not read has no key: it belongs to shard 0, so its error record is written once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from chains.errors import UsageError, clip

MAX_SHARDS = 1_000_000
"""More shards than this is not a plan, it is a typo."""
_SHARD = re.compile(r"([0-9]{1,7})/([0-9]{1,7})")  # ASCII digits only: int() also reads '٣'


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``; a plain ``(index, count)`` pair is accepted wherever a Shard is."""

    index: int
    count: int

    def owns(self, key: str | None) -> bool:
        """Whether the input with this resume key is this shard's (no key: a reader's error, shard 0)."""
        if key is None:
            return self.index == 0
        return shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(key: str, count: int) -> int:
    """The shard of a key: the first 8 bytes of its sha256, big-endian, modulo ``count``; the same in any process."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


def as_shard(value: Any) -> Shard:
    """``value`` (a Shard or an ``(index, count)`` pair of whole numbers) as a checked Shard, or one usage error."""
    if isinstance(value, Shard):
        value = (value.index, value.count)
    try:
        index, count = value
    except (TypeError, ValueError):
        raise UsageError(f"shard must be (index, count), got {clip(repr(value))}") from None
    if not all(type(n) is int for n in (index, count)):  # not bool, not float: 1.0 is not a shard number
        raise UsageError(f"shard must be two whole numbers (index, count), got {clip(repr(value))}")
    if not 1 <= count <= MAX_SHARDS:
        raise UsageError(f"shard count must be 1 to {MAX_SHARDS:,}, got {count}")
    if not 0 <= index < count:
        raise UsageError(f"shard index must be 0 to {count - 1} (shards of {count} are 0..{count - 1}), got {index}")
    return Shard(index, count)


def parse_shard(text: str) -> Shard:
    """``--shard I/N`` (``0 <= I < N``) as a Shard, or one usage error naming the flag and the fix."""
    match = _SHARD.fullmatch(text)
    if match is None:
        raise UsageError(f"--shard takes I/N, e.g. 0/4 (shard I of N, 0 <= I < N), got {clip(repr(text))}")
    try:
        return as_shard((int(match[1]), int(match[2])))
    except UsageError as exc:
        raise UsageError(f"--shard {text}: {exc}; pass I/N with 0 <= I < N") from None


class ShardCount(NamedTuple):
    """How many of ``total`` inputs are the shard's (``inputs``)."""

    inputs: int
    total: int


def count_shard(inputs: Iterable[Any], key: Callable[[Any], str], shard: Shard) -> ShardCount:
    """One pass over ``inputs`` (a fresh reader of the same file), for the progress total and the summary."""
    owned = total = 0
    for value in inputs:
        total += 1
        owned += shard.owns(None if isinstance(value, BaseException) else key(value))
    return ShardCount(owned, total)


__all__ = ["MAX_SHARDS", "Shard", "ShardCount", "as_shard", "count_shard", "parse_shard", "shard_of"]
