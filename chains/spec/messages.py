"""A prompt file's messages: f-string templates whose fields are plain names, and chat-history placeholders.

``template_variables`` is the one reader of a template; ``StrictModel`` is the base of every part of a prompt
file (unknown keys rejected, no type coercion).
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chains.errors import clip
from chains.spec.spec_errors import shown

IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def template_variables(template: str) -> list[str]:
    """Return the variables of an f-string template, in order of first use.

    Only plain names are allowed (``{topic}``); attribute or index access,
    conversions and format specs are rejected with a ValueError saying so.
    Literal braces are written ``{{`` and ``}}``.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"unbalanced brace ({exc}); write literal braces as {{{{ and }}}}") from None
    found: dict[str, None] = {}  # ordered and O(1) membership: a template may hold thousands of fields
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        shown = clip("{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
        if field == "":
            raise ValueError(
                f"{shown} has no variable name; use a name like {{text}}, or write literal braces as {{{{ }}}}"
            )
        if conversion or spec:
            raise ValueError(
                f"{shown} uses a conversion or format spec; only plain names like "
                f"{{{clip(field.split('.')[0].split('[')[0])}}} are allowed"
            )
        if not IDENTIFIER_RE.fullmatch(field):
            raise ValueError(
                f"{shown} is not a plain variable name (no attribute access, indexing "
                "or digits first); use a name like {text}"
            )
        found.setdefault(field)
    return list(found)


class StrictModel(BaseModel):
    """Base: unknown keys rejected, no type coercion (a YAML string is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TextMessage(StrictModel):
    """A system, human or ai message whose content is an f-string template."""

    role: Literal["system", "human", "ai"]
    content: str = Field(min_length=1)

    @field_validator("content")
    @classmethod
    def _plain_fields_only(cls, content: str) -> str:
        template_variables(content)
        return content

    @property
    def variables(self) -> list[str]:
        return template_variables(self.content)


class PlaceholderMessage(StrictModel):
    """Chat history inserted from a list of messages (a MessagesPlaceholder)."""

    role: Literal["placeholder"]
    variable: str
    optional: bool = True

    @field_validator("variable")
    @classmethod
    def _identifier(cls, variable: str) -> str:
        if not IDENTIFIER_RE.fullmatch(variable):
            raise ValueError(f"{shown(variable)} is not a plain variable name; use a name like history")
        return variable

    @property
    def variables(self) -> list[str]:
        return [self.variable]


Message = Annotated[TextMessage | PlaceholderMessage, Field(discriminator="role")]
