"""A pydantic ``response_format`` as the OpenAI SDK's ``parse`` sends it, and the answer parsed back into it.

``ChatOpenAI`` hands a pydantic class given as ``response_format`` (``with_structured_output``'s default
method) to the SDK's ``beta.chat.completions.parse``, which sends it as a *strict* JSON schema (every property
required, no additional properties, ``$ref`` with siblings inlined, ``None`` defaults dropped) and parses the
answer's content into the class.  This is the same, without the SDK (``openai.lib._pydantic``'s rules).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel


def is_pydantic_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def response_format_param(schema: type[BaseModel]) -> dict[str, Any]:
    """``{"type": "json_schema", "json_schema": {...}}`` for a pydantic class, strict."""
    root = schema.model_json_schema()
    return {
        "type": "json_schema",
        "json_schema": {"schema": _strict(root, root), "name": schema.__name__, "strict": True},
    }


def _strict(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    if not isinstance(node, dict):
        raise TypeError(f"Expected {node} to be a dictionary")
    if depth > 64:
        raise ValueError("the response_format schema nests more than 64 levels")
    for key in ("$defs", "definitions"):
        if isinstance(defs := node.get(key), dict):
            for sub in defs.values():
                _strict(sub, root, depth + 1)
    if node.get("type") == "object" and "additionalProperties" not in node:
        node["additionalProperties"] = False
    if isinstance(properties := node.get("properties"), dict):
        node["required"] = list(properties)
        node["properties"] = {k: _strict(v, root, depth + 1) for k, v in properties.items()}
    if isinstance(items := node.get("items"), dict):
        node["items"] = _strict(items, root, depth + 1)
    if isinstance(any_of := node.get("anyOf"), list):
        node["anyOf"] = [_strict(v, root, depth + 1) for v in any_of]
    if isinstance(all_of := node.get("allOf"), list):
        if len(all_of) == 1:
            node.update(_strict(all_of[0], root, depth + 1))
            node.pop("allOf")
        else:
            node["allOf"] = [_strict(v, root, depth + 1) for v in all_of]
    if "default" in node and node["default"] is None:
        node.pop("default")
    ref = node.get("$ref")
    if ref and len(node) > 1:
        resolved = _resolve(root, ref)
        node.update({**copy.deepcopy(resolved), **node})
        node.pop("$ref")
        return _strict(node, root, depth + 1)
    return node


def _resolve(root: dict[str, Any], ref: Any) -> dict[str, Any]:
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise ValueError(f"Unexpected $ref format {ref!r}; Does not start with #/")
    resolved: Any = root
    for key in ref[2:].split("/"):
        resolved = resolved[key]
        if not isinstance(resolved, dict):
            raise ValueError(f"Expected `$ref: {ref}` to resolve to a dictionary")
    return resolved


def parse_content(schema: type[BaseModel], message: dict[str, Any]) -> BaseModel | None:
    """The answer's content as an instance of ``schema``; None for a refusal or an empty content (the SDK's rule)."""
    content = message.get("content")
    if not content or message.get("refusal") or not isinstance(content, str):
        return None
    return schema.model_validate_json(content)
