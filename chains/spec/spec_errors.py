"""A prompt file's problems, each as one line that names the field and the fix.

pydantic reports a file's problems as a list of errors with machine paths
(``('messages', 1, 'human', 'content')``) and its own wording; ``spec_error``
turns the first one into a ``PromptSpecError`` such as
``prompts/story.yaml: model: unknown key 'temprature'; allowed: ... (did you
mean 'temperature'?)``.  Validators that know better raise ``Problem`` with the
field and the words to use.  Values from the file are shown clipped
(``shown``, ``quoted``), so an error stays one short line whatever the file
holds.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

from chains.errors import SHOWN_CHARS, PromptSpecError, clip, json_path, one_line

__all__ = ["Problem", "field_path", "quoted", "shown", "spec_error", "type_name"]

SHOWN_NAMES = 10
"""Names listed in one error; the rest are counted (``and 40 more``)."""

Loc = tuple[int | str, ...]
"""pydantic's ``loc``: ``('messages', 1, 'human', 'content')``."""


class Problem(ValueError):
    """A validation problem with an explicit (absolute) field path.

    Raised inside validators; pydantic wraps it in a ValidationError and
    ``spec_error`` unwraps it into a PromptSpecError.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


def quoted(names: Iterable[str]) -> str:
    """``'a', 'b'``; after ``SHOWN_NAMES`` names, ``and N more`` keeps an error to one short line."""
    listed = list(names)
    listing = ", ".join(f"'{clip(n)}'" for n in listed[:SHOWN_NAMES])
    hidden = len(listed) - SHOWN_NAMES
    return listing + (f" and {hidden} more" if hidden > 0 else "")


def shown(value: Any) -> str:
    """``repr`` of a value from the file, clipped to one short line."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def type_name(value: Any) -> str:
    """What a value from the file is, in words: ``an integer``, ``nothing (null)``."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "a mapping",
    }
    return names.get(type(value), type(value).__name__)


def field_path(loc: Loc, roles: Iterable[str]) -> str:
    """``('messages', 1, 'human', 'content')`` -> ``messages[1].content``.

    Drops the discriminated-union tag pydantic inserts after a message index, and its ``[key]`` marker.
    """
    tags = set(roles)
    parts = [
        item
        for at, item in enumerate(loc)
        if isinstance(item, int) or (item != "[key]" and not (at and isinstance(loc[at - 1], int) and item in tags))
    ]
    return json_path(parts)


def spec_error(
    label: str, exc: ValidationError, *, roles: tuple[str, ...], allowed_keys: Callable[[Loc], list[str]]
) -> PromptSpecError:
    """Turn pydantic's first error into one readable line.

    An unknown key is reported first: it is usually a typo that also explains
    a "missing key" error (``temprature`` / ``temperature``).  ``roles`` are the
    message roles (pydantic's tag in paths); ``allowed_keys(parent)`` lists the
    keys allowed where an unknown one was found.
    """
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc, kind, ctx, value = tuple(err["loc"]), err["type"], err.get("ctx", {}), err.get("input")
    field = field_path(loc, roles)
    if kind == "value_error" and isinstance(ctx.get("error"), Problem):
        problem: Problem = ctx["error"]
        return PromptSpecError(label, problem.field, problem.problem)
    if kind in ("value_error", "assertion_error"):
        return PromptSpecError(label, field, str(ctx.get("error", err["msg"])))
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(key, allowed, n=1)
        text = f"unknown key '{clip(key)}'; allowed: {', '.join(allowed)}"
        text += f" (did you mean '{hint[0]}'?)" if hint else ""
        if key == "template_format":
            text += "; templates are always f-strings ({name}, literal braces {{ }})"
        return PromptSpecError(label, field_path(loc[:-1], roles), text)
    if kind == "missing":
        return PromptSpecError(
            label, field_path(loc[:-1], roles), f"missing required key '{clip(str(loc[-1]))}'; add it"
        )
    listed = ", ".join(roles)
    if kind == "union_tag_invalid":
        tag = clip(str(ctx.get("tag")))
        return PromptSpecError(label, f"{field}.role", f"'{tag}' is not a role; use one of: {listed}")
    if kind == "union_tag_not_found":
        return PromptSpecError(label, field, f"missing required key 'role'; use one of: {listed}")
    if kind in EXPECTED:
        text = f"expected {EXPECTED[kind]}, got {type_name(value)}"
        if kind == "string_type" and isinstance(value, dict):
            text += "; quote text that starts with '{', e.g. content: \"{text}\""
        return PromptSpecError(label, field, text)
    if kind == "literal_error":
        return PromptSpecError(label, field, f"must be {ctx.get('expected')}, got {shown(value)}")
    if kind == "string_too_short":
        return PromptSpecError(label, field, "must not be empty")
    message = str(err["msg"]).replace("Input should", "should")
    return PromptSpecError(label, field, f"{one_line(message)}, got {shown(value)}")
