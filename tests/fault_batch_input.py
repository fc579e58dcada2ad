"""A batch input file, read as OpenAI's Batch API reads it: what the upload refuses and what validation finds.

The upload (``upload_format_error``) refuses only an empty file or one whose first line is no JSON object; every
other problem is found at validation (``validate_lines``), line by line, as ``errors.data[]`` entries
``{code, message, line, param}`` (see the codes in ``fault_batches``). A file with no error becomes its ``Row``s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

__all__ = [
    "FORMAT_MESSAGE",
    "MAX_ERRORS",
    "Row",
    "Validation",
    "batch_error",
    "type_message",
    "upload_format_error",
    "validate_lines",
]

MAX_ERRORS = 1_000
FORMAT_MESSAGE = "Invalid file format for Batch API. Must be .jsonl"


def batch_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _type_name(value: Any) -> str:
    """JSON's name for a value's type, as OpenAI's ``invalid_type`` messages say it."""
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array")):
        if isinstance(value, kind):
            return name
    return "object"


def type_message(param: str, expected: str, value: Any) -> str:
    return f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead."


@dataclass(slots=True)
class Row:
    """One valid input line: what the batch will answer."""

    line: int
    custom_id: str
    body: dict[str, Any]
    key: str = ""
    """The last user message (filled in by ``Batches``): what fault rules match."""


@dataclass(slots=True)
class Validation:
    """A batch input file read once: its rows (none when there are errors) and its errors."""

    rows: list[Row]
    errors: list[dict[str, Any]]
    custom_ids: list[str]
    """Every string custom_id in the file, valid line or not: what was submitted."""
    model: str | None = None


def _lines(data: bytes) -> list[bytes]:
    """The file's lines; trailing blank lines are the end of the file, not requests."""
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def upload_format_error(data: bytes) -> str | None:
    """What the upload of a batch file refuses (only an empty file or a first line that is no JSON object)."""
    if not data or data.isspace():
        return FORMAT_MESSAGE
    try:
        first = json.loads(data.split(b"\n", 1)[0])
    except (ValueError, RecursionError):
        return FORMAT_MESSAGE
    return None if isinstance(first, dict) else FORMAT_MESSAGE


def validate_lines(data: bytes, endpoint: str, max_lines: int, max_errors: int = MAX_ERRORS) -> Validation:
    """Check a batch input file line by line as OpenAI's validation does; never raises, reads at most max_lines."""
    lines = _lines(data)
    if not lines:
        return Validation([], [batch_error("empty_file", "The batch input file is empty.")], [])
    if len(lines) > max_lines:
        message = f"The batch input file has {len(lines)} requests; a batch holds at most {max_lines}. Split the file."
        return Validation([], [batch_error("too_many_tasks", message)], [])
    check = _LineCheck(endpoint)
    for number, raw in enumerate(lines, 1):
        check.line(number, raw)
        if len(check.errors) >= max_errors:
            break
    errors = check.errors[:max_errors]
    return Validation([] if errors else check.rows, errors, check.custom_ids, check.model)


class _LineCheck:
    """Checks one line after another, remembering what later lines are checked against (custom_ids, the model)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.rows: list[Row] = []
        self.errors: list[dict[str, Any]] = []
        self.custom_ids: list[str] = []
        self.seen: set[str] = set()
        self.model: str | None = None

    def fail(self, code: str, message: str, line: int, param: str | None = None) -> None:
        self.errors.append(batch_error(code, message, line, param))

    def line(self, number: int, raw: bytes) -> None:
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            self.fail("invalid_json_line", "This line is not parseable as valid JSON.", number)
            return
        if not isinstance(obj, dict):
            self.fail("invalid_request", "Each line must be a JSON object.", number)
            return
        before = len(self.errors)
        self.envelope(number, obj)
        body, custom_id = obj.get("body"), obj.get("custom_id")
        if isinstance(body, dict):
            self.body(number, body)
        if isinstance(custom_id, str):
            self.custom_id(number, custom_id)
        if len(self.errors) == before:
            self.rows.append(Row(number, cast(str, custom_id), cast(dict[str, Any], body)))

    def envelope(self, number: int, obj: dict[str, Any]) -> None:
        for name, kind, expected in (
            ("custom_id", str, "a string"),
            ("method", str, "a string"),
            ("url", str, "a string"),
            ("body", dict, "an object"),
        ):
            if name not in obj:
                self.fail("missing_required_parameter", f"Missing required parameter: '{name}'.", number, name)
            elif not isinstance(obj[name], kind):
                self.fail("invalid_type", type_message(name, expected, obj[name]), number, name)
        method, url = obj.get("method"), obj.get("url")
        if isinstance(method, str) and method != "POST":
            self.fail("invalid_value", f"Invalid value: {method!r}. Supported values are: 'POST'.", number, "method")
        if isinstance(url, str) and url != self.endpoint:
            message = "The URL provided for this request does not match the batch endpoint."
            self.fail("invalid_url", message, number, "url")

    def body(self, number: int, body: dict[str, Any]) -> None:
        stream = body.get("stream")
        if stream is True:
            message = "Chat Completions: Streaming is not supported in the Batch API."
            self.fail("streaming_unsupported", message, number, "body.stream")
        elif stream is not None and stream is not False:
            self.fail("invalid_type", type_message("body.stream", "a boolean", stream), number, "body.stream")
        model = body.get("model")
        if "model" not in body:
            self.fail("invalid_request", "Model parameter is required.", number, "body.model")
        elif not isinstance(model, str):
            self.fail("invalid_type", type_message("body.model", "a string", model), number, "body.model")
        elif self.model is None:
            self.model = model
        elif model != self.model:
            message = (
                f"The model {model!r} does not match the model {self.model!r} of this batch's other requests: "
                "a batch input file holds requests to one model."
            )
            self.fail("model_mismatch", message, number, "body.model")
        if "messages" not in body:
            self.fail("invalid_request", "Messages parameter is required.", number, "body.messages")
        elif not isinstance(body["messages"], list):
            message = type_message("body.messages", "an array", body["messages"])
            self.fail("invalid_type", message, number, "body.messages")

    def custom_id(self, number: int, custom_id: str) -> None:
        self.custom_ids.append(custom_id)
        if custom_id in self.seen:
            message = (
                "The custom_id for this request is a duplicate of another request. "
                "The custom_id parameter must be unique for each request in a batch."
            )
            self.fail("duplicate_custom_id", message, number, "custom_id")
        self.seen.add(custom_id)
