"""Output parsers for prompt files: text, and JSON checked against the file's JSON Schema.

Both parse inline when awaited: LangChain's ``BaseOutputParser.aparse_result`` runs ``parse_result`` in the
default thread pool, a thread hop per answer for work that takes microseconds (benchmarks/ scenario 9).
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers import BaseOutputParser, StrOutputParser
from langchain_core.outputs import Generation

_FENCE_RE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


class TextOutputParser(StrOutputParser):
    """``StrOutputParser`` that parses inline when awaited (see the module)."""

    async def aparse_result(self, result: list[Generation], *, partial: bool = False) -> str:
        return self.parse_result(result, partial=partial)


class JsonSchemaOutputParser(BaseOutputParser[Any]):
    """Parse a model reply as JSON (a ```json fence is tolerated) and check it
    against a JSON Schema; problems raise OutputParserException saying what is wrong."""

    prompt_name: str = "json"
    json_schema: dict[str, Any]

    @property
    def _type(self) -> str:
        return "chain_runner_json_schema"

    async def aparse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        return self.parse_result(result, partial=partial)

    def parse(self, text: str) -> Any:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import best_match

        fenced = _FENCE_RE.search(text)
        body = (fenced.group(1) if fenced else text).strip()
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            preview = body if len(body) <= 80 else body[:77] + "..."
            raise OutputParserException(
                f"{self.prompt_name}: model output is not valid JSON "
                f"({exc.msg} at line {exc.lineno} column {exc.colno}); got {preview!r}",
                llm_output=text,
            ) from None
        error = best_match(Draft202012Validator(self.json_schema).iter_errors(value))
        if error is not None:
            where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            raise OutputParserException(
                f"{self.prompt_name}: model output does not match the output schema at {where}: {error.message}",
                llm_output=text,
            )
        return value
