"""JSON that fits a JSON schema, for the offline model (``response_format`` and tool arguments).

Deterministic for a given random generator, bounded in depth and size, and drawn from the prompt where it
can be: numbers and quoted phrases it holds, keywords of its text.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from typing import Any

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w|\.\d)")
_QUOTED = re.compile(r"""(?<!\w)(?:'([^'\n]{1,200})'|"([^"\n]{1,200})"|“([^”\n]{1,200})”)(?!\w)""")
_SCAN = 64
"""At most this many numbers and quoted phrases are taken from a prompt."""
_MAX_DEPTH = 16
_MAX_NODES = 2000
"""A schema (from a prompt file or a tool) is filled to this depth and this many values at most."""
_MAX_ITEMS = 16


def _finite(value: Any) -> float | None:
    """A JSON number from a schema keyword, or None for anything else (bools, strings, inf, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if abs(value) <= 1e15 else None  # also refuses NaN and infinities


def _vocabulary(schema: Any) -> set[str]:
    """The schema's own words (property names, enum and const values): the format, not the content."""
    found: set[str] = set()
    stack, visited = [schema], 0
    while stack and visited < _MAX_NODES:
        node, visited = stack.pop(), visited + 1
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                found.update(str(name) for name in props)
            for key in ("enum", "const"):
                if key in node:
                    values = node[key]
                    found.update(str(v) for v in (values if isinstance(values, list) else [values]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


class SchemaFiller:
    """A small JSON value that fits a JSON schema (the common subset: types, properties, items, enum,
    const, anyOf/oneOf/allOf, local ``$ref``, bounds), with values taken from the prompt where it has
    them: the numbers it mentions for numeric fields and its quoted phrases for strings, in order, as a
    model would pick them out of "add 3 and 4" or "a customer named 'Acme'".

    Any schema, malformed or recursive, gives a bounded value and never an error: a fake model should
    answer wherever a real one would.
    """

    def __init__(self, rng: random.Random, prompt: str, words: list[str], root: Any) -> None:
        self.rng = rng
        self.words = words  # the prompt's keywords, for strings it has no phrase for
        self.root = root
        self.nodes = 0
        own = _vocabulary(root)
        numbers = (m.group() for m in _NUMBER.finditer(prompt))
        self.numbers = [float(n) if "." in n else int(n) for n in itertools.islice(numbers, _SCAN)]
        phrases = (next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(prompt))
        self.phrases = [p for p in itertools.islice(phrases, _SCAN) if p not in own and any(c.isalnum() for c in p)]

    def value(self, schema: Any, depth: int = 0) -> Any:
        self.nodes += 1
        if not isinstance(schema, dict) or depth > _MAX_DEPTH or self.nodes > _MAX_NODES:
            return None
        schema = self._resolved(schema, depth)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                real = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
                return self.value((real or options)[0], depth + 1)
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, dict):
                    merged.update(self._resolved(part, depth))
            return self.value(merged, depth + 1)
        return self._typed(schema, self._kind(schema), depth)

    def _resolved(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """Follow a local ``$ref`` (``#/$defs/Name``), a few levels at most; anything else stays as it is."""
        for _ in range(_MAX_DEPTH - depth + 1):
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return schema
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                return {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return {}

    @staticmethod
    def _kind(schema: dict[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if isinstance(k, str) and k != "null"), "null")
        if isinstance(kind, str):
            return kind
        return "array" if "items" in schema else "object"

    def _typed(self, schema: dict[str, Any], kind: str, depth: int) -> Any:
        if kind == "object":
            props = schema.get("properties")
            if not isinstance(props, dict):
                return {}
            return {str(key): self.value(sub, depth + 1) for key, sub in props.items()}
        if kind == "array":
            low = min(max(1, int(_finite(schema.get("minItems")) or 1)), _MAX_ITEMS)
            high = min(max(low, int(_finite(schema.get("maxItems")) or 3)), max(low, 5))
            item = schema.get("items")
            item = item if isinstance(item, dict) else {"type": "string"}
            return [self.value(item, depth + 1) for _ in range(self.rng.randint(low, high))]
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        return None

    def _string(self, schema: dict[str, Any]) -> str:
        text = self.phrases.pop(0) if self.phrases else self.rng.choice(self.words)
        longest = _finite(schema.get("maxLength"))
        return text[: int(longest)] if longest is not None and longest >= 0 else text

    def _number(self, schema: dict[str, Any], *, integer: bool) -> int | float:
        low, high = _finite(schema.get("minimum")), _finite(schema.get("maximum"))
        above, below = _finite(schema.get("exclusiveMinimum")), _finite(schema.get("exclusiveMaximum"))

        def fits(n: float) -> bool:
            return not (
                (low is not None and n < low)
                or (high is not None and n > high)
                or (above is not None and n <= above)
                or (below is not None and n >= below)
            )

        for i, n in enumerate(self.numbers):
            if (not integer or isinstance(n, int)) and fits(n):
                return self.numbers.pop(i)
        start = low if low is not None else (above + 1 if above is not None else 0)
        end = high if high is not None else (below - 1 if below is not None else start + 10)
        end = max(start, end)
        if integer:
            return self.rng.randint(math.ceil(start), max(math.ceil(start), math.floor(end)))
        return round(self.rng.uniform(start, end), 3)
