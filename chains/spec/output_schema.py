"""A prompt file's ``output.schema``: bounded, JSON only, and a valid JSON Schema (Draft 2020-12).

The schema comes from outside and goes far: it is sent to the provider as
``response_format``, printed by ``list --json``, and walked by the JSON Schema
check and by every reply's validation.  So it is checked in two steps, each
returning the first problem as ``(field, problem)`` (or None) for
``prompt_spec`` to report with the file's name:

- ``bounds_problem``, before anything else walks it: at most
  ``MAX_SCHEMA_NODES`` values nested at most ``MAX_SCHEMA_DEPTH`` deep, and
  only what JSON can hold (YAML also builds dates, sets, binary data,
  infinities and non-text keys).  Iterative, and it stops at the first
  problem, so it is bounded whatever the schema holds.
- ``validity_problem``: a valid Draft 2020-12 schema (``jsonschema``, imported
  only then, so listing chains stays fast).
"""

from __future__ import annotations

import math
from typing import Any

from chains.errors import clip, json_path, one_line

__all__ = ["MAX_SCHEMA_DEPTH", "MAX_SCHEMA_NODES", "Problem", "bounds_problem", "validity_problem"]

MAX_SCHEMA_NODES = 10_000
"""JSON values in ``output.schema``: the JSON Schema check takes about 1 s at this size."""
MAX_SCHEMA_DEPTH = 64
"""Nesting of ``output.schema``; ``$defs`` and ``$ref`` express anything deeper."""

ROOT = "output.schema"

Problem = tuple[str, str]
"""``(field, problem)``: ``("output.schema.const", "must hold only JSON values (got a date); ...")``."""

_JSON_NAMES = {"date": "a date", "datetime": "a date and time", "set": "a set", "bytes": "binary data"}
_KEY_NAMES = {type(None): "nothing (null)", bool: "a boolean", int: "an integer", float: "a number"}

_Link = tuple[Any, str | int] | None
"""A place in the schema as a parent link: ``((None, "properties"), "a")``; spelled out only for an error."""


def _not_json(value: Any) -> str | None:
    """What a YAML value that JSON cannot hold is (``a date``), or None for a JSON value."""
    if value is None or isinstance(value, str | bool | int | dict | list):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "infinity or NaN"
    return _JSON_NAMES.get(type(value).__name__, type(value).__name__)


def _spell(link: _Link) -> str:
    """``((None, "properties"), "a")`` -> ``output.schema.properties.a``."""
    steps: list[str | int] = []
    while link is not None:
        link, step = link
        steps.append(step if isinstance(step, int) else clip(step))
    return json_path(reversed(steps), root=ROOT)


def bounds_problem(schema: dict[str, Any]) -> Problem | None:
    """The first reason ``schema`` is too big, too deep or not JSON, or None."""
    stack: list[tuple[Any, int, _Link]] = [(schema, 1, None)]
    count = 0
    while stack:
        value, depth, link = stack.pop()
        count += 1
        if count > MAX_SCHEMA_NODES:
            return ROOT, f"has more than {MAX_SCHEMA_NODES:,} values; an output schema needs far fewer, simplify it"
        if depth > MAX_SCHEMA_DEPTH and isinstance(value, dict | list):
            return ROOT, (
                f"nested more than {MAX_SCHEMA_DEPTH} levels deep; flatten it (name shared parts in $defs and use $ref)"
            )
        problem = _not_json(value)
        if problem is not None:
            return _spell(link), f"must hold only JSON values (got {problem}); write it as JSON data"
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    kind = _not_json(key) or _KEY_NAMES.get(type(key), type(key).__name__)
                    return _spell(link), f"keys must be text (got a key that is {kind}); quote the key"
                stack.append((item, depth + 1, (link, key)))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (link, index)) for index, item in enumerate(value))
    return None


def validity_problem(schema: dict[str, Any]) -> Problem | None:
    """Why a bounded, JSON-only ``schema`` is not a valid Draft 2020-12 JSON Schema, or None."""
    from jsonschema import Draft202012Validator, SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except RecursionError:  # re.compile of a 'pattern' with hundreds of nested groups
        return ROOT, "too deeply nested to check (a 'pattern' with hundreds of nested groups?); simplify it"
    except SchemaError as exc:
        where = json_path((p if isinstance(p, int) else clip(str(p)) for p in exc.path), root=ROOT)
        return where, f"not a valid JSON Schema (Draft 2020-12): {one_line(exc.message)}"
    return None
