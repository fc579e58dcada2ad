"""Token estimates for when a provider reports no usage, and for rate-limit reservations.

tiktoken is used where it knows the model *and* its encoding is available on
this machine (tiktoken downloads encodings on first use, which fails offline);
otherwise the rule of thumb of about four characters per token applies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

CHARS_PER_TOKEN = 4.0


def estimate_tokens(text: str) -> int:
    """Characters-per-token rule: cheap, never zero for non-empty text."""
    if not text:
        return 0
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


@functools.lru_cache(maxsize=16)
def _tiktoken_counter(model: str) -> Callable[[str], int] | None:
    try:
        import tiktoken

        encoding = tiktoken.encoding_for_model(model)
        encoding.encode("probe")
    except Exception:  # unknown model, or the encoding cannot be fetched offline
        return None
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def counter_for(model: str | None) -> tuple[Callable[[str], int], bool]:
    """A token counter for ``model`` and whether it is exact (tiktoken) or estimated."""
    if model:
        exact = _tiktoken_counter(model)
        if exact is not None:
            return exact, True
    return estimate_tokens, False
