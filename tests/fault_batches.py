"""The fault server's Files + Batches API: OpenAI's batch tier, with faults, so batch clients can be tested.

Why it behaves as it does: it follows what OpenAI does (the SDK's types ``openai/types/batch*.py`` and
``file_object.py``, the Batch API guide, and what the live API answered in llama-stack's recorded batch
error tests), so a client that passes here meets the same shapes and the same refusals at OpenAI.

- ``POST /v1/files`` (multipart ``purpose`` + ``file``) stores the bytes and answers a ``FileObject``. For
  ``purpose=batch`` the upload itself refuses (400) only a file over ``max_bytes`` ("File is too large.") and a
  file that is empty or whose first line is not a JSON object; every other problem is found at validation.
  ``GET /v1/files[/{id}[/content]]`` and ``DELETE /v1/files/{id}`` as OpenAI.
- ``POST /v1/batches`` refuses bad parameters with a 400 (``endpoint``, ``completion_window``, ``metadata``,
  ``input_file_id``); a batch is created ``validating`` and any problem in its file sends it to ``failed`` with
  ``errors.data[]`` ``{code, message, line, param}``: ``invalid_json_line``, ``missing_required_parameter``,
  ``invalid_type``, ``invalid_value`` (method), ``invalid_url``, ``streaming_unsupported``, ``duplicate_custom_id``,
  ``model_mismatch`` (one model per file), ``too_many_tasks`` (over ``max_lines``), ``invalid_request`` (no such
  file). At most ``MAX_ERRORS`` errors are reported.
- Statuses follow time: ``validating`` → ``in_progress`` (rows answered one by one, spread over the phase, so
  ``request_counts`` grows) → ``finalizing`` → ``completed``, each phase as long as the settings say
  (``BATCH_DEFAULTS``). ``POST /v1/batches/{id}/cancel``: ``cancelling`` → ``cancelled``, the rows already answered
  stay in the output file; a finished batch answers 409. ``GET /v1/batches?limit=&after=`` lists newest first.
- Each row is answered exactly as ``POST /v1/chat/completions`` answers that body non-streamed (the same
  ``fault_replies.Reply``: ``echo: …`` content, usage, and the server's fault rules by ``match``). A 200 goes to the
  output file, any other status to the error file with its error body. A connection-level fault (``reset``,
  ``endless``) becomes a 500 there, which is what a batch worker reports; a ``stall`` only delays, so it answers.

Batch faults (``add_fault(kind, match=None, times=None, **kw)``, ``match`` is a substring of a row's last user
message as for chat faults; ``times`` counts rows for row faults, batches for the others):
``validation_failed`` (``code``, ``message``, ``param``, ``line``: the batch fails), ``row_error`` (``status``,
``message``, ``error_type``), ``row_expire`` (the batch ends ``expired``, matched rows come back as
``batch_expired`` errors, counted in ``request_counts.failed``), ``stall`` (``after_rows``, ``stall_s``; None: until ``release()``), ``slow_finalizing``
(``seconds``).

Bookkeeping (``stats()``; ``reset_stats()`` clears it, ``reset()`` also drops every file, batch, rule and setting):
``submissions`` (custom_id → times it was in a created batch), ``answers`` (custom_id → times it was answered),
rows answered apart from online requests, the batches created and the files stored with their bytes and rows.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from fault_replies import Reply, error_body
from fault_rules import ODD_KINDS, STATUS_ERRORS, STATUS_KINDS, Rule
from fault_settings import Config

__all__ = [
    "BATCH_DEFAULTS",
    "BATCH_FAULT_KINDS",
    "MAX_ERRORS",
    "BatchRule",
    "Batches",
    "Row",
    "Validation",
    "upload_format_error",
    "validate_lines",
]

BATCH_DEFAULTS: dict[str, float] = {
    "validating_s": 0.05,
    "in_progress_s": 0.1,
    "finalizing_s": 0.05,
    "cancelling_s": 0.05,
    "max_lines": 50_000,
    "max_bytes": 200_000_000,  # OpenAI's 200 MB, read strictly: a client under it here is under it there
}
MAX_ERRORS = 1_000
ENDPOINTS = ("/v1/chat/completions",)
PURPOSES = ("assistants", "batch", "evals", "fine-tune", "user_data", "vision")
WINDOW_S = 24 * 3600
FORMAT_MESSAGE = "Invalid file format for Batch API. Must be .jsonl"
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
BATCH_FAULT_KINDS = frozenset({"validation_failed", "row_error", "row_expire", "stall", "slow_finalizing"})
BATCH_RULE_KEYS = frozenset(
    {"fault", "match", "times", "status", "message", "error_type", "code", "param", "line"}
    | {"stall_s", "after_rows", "seconds"}
)
_ROW_KINDS = frozenset({"row_error", "row_expire"})
_ANSWERS_AS_ODD = ODD_KINDS - {"endless"}
_POLL_S = 0.01
_READ_CHUNK = 64 * 1024

PickFault = Callable[[str, bool, str | None], Rule | None]
Digest = Callable[[list[Any]], tuple[str, int]]
Length = Callable[[dict[str, Any], Config], tuple[int, str]]


def _now() -> int:
    return int(time.time())


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None, type_: str = "invalid_request_error"
) -> web.Response:
    """An error answered the way OpenAI words its own: ``{"error": {message, type, param, code}}``."""
    return web.Response(status=status, body=error_body(message, type_, code, param), content_type="application/json")


def _batch_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _type_name(value: Any) -> str:
    """JSON's name for a value's type, as OpenAI's ``invalid_type`` messages say it."""
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array")):
        if isinstance(value, kind):
            return name
    return "object"


def _type_message(param: str, expected: str, value: Any) -> str:
    return f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead."


# ----------------------------------------------------------------------------- the input file


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
        return Validation([], [_batch_error("empty_file", "The batch input file is empty.")], [])
    if len(lines) > max_lines:
        message = f"The batch input file has {len(lines)} requests; a batch holds at most {max_lines}. Split the file."
        return Validation([], [_batch_error("too_many_tasks", message)], [])
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
        self.errors.append(_batch_error(code, message, line, param))

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
                self.fail("invalid_type", _type_message(name, expected, obj[name]), number, name)
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
            self.fail("invalid_type", _type_message("body.stream", "a boolean", stream), number, "body.stream")
        model = body.get("model")
        if "model" not in body:
            self.fail("invalid_request", "Model parameter is required.", number, "body.model")
        elif not isinstance(model, str):
            self.fail("invalid_type", _type_message("body.model", "a string", model), number, "body.model")
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
            message = _type_message("body.messages", "an array", body["messages"])
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


# ----------------------------------------------------------------------------- faults


_rule_ids = itertools.count(1)


class BatchRule:
    """One batch fault rule: what it does to a batch or a row, which rows it matches, how often it fires."""

    __slots__ = (
        "after_rows",
        "applied",
        "code",
        "error_type",
        "id",
        "kind",
        "line",
        "match",
        "message",
        "param",
        "remaining",
        "seconds",
        "stall_s",
        "status",
        "times",
    )

    def __init__(
        self,
        fault: str,
        match: str | None = None,
        times: int | None = None,
        *,
        status: int = 500,
        message: str | None = None,
        error_type: str | None = None,
        code: str = "invalid_request",
        param: str | None = None,
        line: int | None = None,
        stall_s: float | None = None,
        after_rows: int = 0,
        seconds: float = 1.0,
    ) -> None:
        if fault not in BATCH_FAULT_KINDS:
            raise ValueError(f"unknown batch fault kind {fault!r}; expected one of {sorted(BATCH_FAULT_KINDS)}")
        if times is not None and int(times) < 0:
            raise ValueError("times must be >= 0 or None")
        if int(status) not in STATUS_ERRORS:
            raise ValueError(f"status must be one of {sorted(STATUS_ERRORS)}")
        if int(after_rows) < 0 or float(seconds) < 0 or (stall_s is not None and float(stall_s) < 0):
            raise ValueError("after_rows, seconds and stall_s must be >= 0")
        self.id = next(_rule_ids)
        self.kind = fault
        self.match = None if match is None else str(match)
        self.times = None if times is None else int(times)
        self.remaining = self.times
        self.applied = 0
        self.status = int(status)
        self.message = None if message is None else str(message)
        self.error_type = None if error_type is None else str(error_type)
        self.code = str(code)
        self.param = None if param is None else str(param)
        self.line = None if line is None else int(line)
        self.stall_s = None if stall_s is None else float(stall_s)
        self.after_rows = int(after_rows)
        self.seconds = float(seconds)

    @classmethod
    def from_dict(cls, data: Any) -> BatchRule:
        if not isinstance(data, dict) or "fault" not in data:
            raise ValueError("a batch fault rule must be an object with a 'fault' key")
        unknown = set(data) - BATCH_RULE_KEYS
        if unknown:
            raise ValueError(f"unknown batch fault rule key(s): {sorted(unknown)}")
        return cls(**data)

    def matches(self, key: str) -> bool:
        return self.remaining != 0 and (self.match is None or self.match in key)

    def fire(self) -> BatchRule:
        if self.remaining is not None:
            self.remaining -= 1
        self.applied += 1
        return self

    def as_chat_rule(self) -> Rule:
        """A ``row_error`` as the chat fault rule whose answer it is."""
        return Rule(str(self.status), message=self.message, error_type=self.error_type)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault": self.kind,
            "match": self.match,
            "times": self.times,
            "remaining": self.remaining,
            "applied": self.applied,
            "status": self.status,
            "message": self.message,
            "error_type": self.error_type,
            "code": self.code,
            "param": self.param,
            "line": self.line,
            "stall_s": self.stall_s,
            "after_rows": self.after_rows,
            "seconds": self.seconds,
        }


# ----------------------------------------------------------------------------- files and batches


@dataclass(slots=True)
class FileRecord:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    @property
    def rows(self) -> int:
        return self.data.count(b"\n") + (0 if not self.data or self.data.endswith(b"\n") else 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            "purpose": self.purpose,
            "bytes": len(self.data),
            "rows": self.rows,
        }


@dataclass(slots=True, eq=False)
class BatchRecord:
    """One batch: the Batch object's fields, the lines answered so far, and what its runner is told."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    settings: dict[str, float]
    validation: Validation | None
    """None: the input file did not exist."""
    headers: dict[str, str]
    status: str = "validating"
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output: list[bytes] = field(default_factory=list)
    error_lines: list[bytes] = field(default_factory=list)
    cancel_requested: bool = False
    dropped: bool = False
    stalled: bool = False
    fired: set[int] = field(default_factory=set)
    """Ids of the batch-level rules that already fired for this batch."""

    @property
    def rows(self) -> list[Row]:
        return [] if self.validation is None else self.validation.rows

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "expired", "cancelled")

    def to_dict(self) -> dict[str, Any]:
        """The Batch object, with every field the SDK's ``Batch`` type has."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": None if self.validation is None else self.validation.model,
            "errors": None if self.errors is None else {"object": "list", "data": list(self.errors)},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.created_at + WINDOW_S,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": self.metadata,
        }

    def summary(self) -> dict[str, Any]:
        counts = {"total": self.total, "completed": self.completed, "failed": self.failed}
        return {
            "id": self.id,
            "status": self.status,
            "input_file_id": self.input_file_id,
            "rows": len(self.rows),
            "request_counts": counts,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
        }


# ----------------------------------------------------------------------------- one row's answer


_CAPTURED = web.Response()


def _no_end(entry: dict[str, Any], outcome: str) -> None:
    """A batch row has no connection whose end the server's online bookkeeping would count."""


@dataclass(slots=True)
class _Captured(Reply):
    """The chat answer to a row, kept instead of sent: the same ``Reply``, so the same answer."""

    status: int = 0
    payload: bytes = b"null"

    async def send_json(self, status: int, payload: bytes) -> web.Response:
        self.status, self.payload = status, payload
        return _CAPTURED


async def _respond(reply: _Captured, rule: Rule | None, answer_id: str) -> None:
    kind = None if rule is None else rule.kind
    if rule is None or kind == "stall":  # a stall only delays; a batch row has no deadline to miss
        reply.model = str(reply.body.get("model") or reply.cfg.models[0])
        reply.id = answer_id
        await reply.completion()
    elif kind in STATUS_KINDS:
        await reply.status_error(rule)
    elif kind == "context_length":
        await reply.context_length(rule)
    elif kind in _ANSWERS_AS_ODD:
        await reply.odd_answer(rule)
    else:  # reset, endless: the model's connection died, which a batch worker reports as a 500
        await reply.status_error(Rule("500"))


# ----------------------------------------------------------------------------- the service


@dataclass(slots=True)
class _Upload:
    purpose: str | None = None
    filename: str = "file"
    data: bytes | None = None
    too_large: bool = False


async def _read_part(part: BodyPartReader, limit: int) -> bytes | None:
    """A form field's bytes, or None past ``limit`` (reading stops there: memory stays bounded)."""
    buf = bytearray()
    while chunk := await part.read_chunk(_READ_CHUNK):
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


async def _read_upload(request: web.Request, max_bytes: int) -> _Upload:
    reader = await request.multipart()
    upload = _Upload()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ValueError("a nested multipart body is not a file upload")
        if part.name == "purpose":
            raw = await _read_part(part, 256)
            upload.purpose = "<too long>" if raw is None else raw.decode("utf-8", "replace")
        elif part.name == "file":
            upload.filename = part.filename or "file"
            upload.data = await _read_part(part, max_bytes)
            if upload.data is None:
                upload.too_large = True
                return upload
        else:
            await part.release()
    return upload


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except (ValueError, RecursionError):
        return None


def _metadata_error(metadata: Any) -> web.Response | None:
    """OpenAI's limits on metadata: at most 16 string values, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return _error(400, _type_message("metadata", "an object", metadata), "metadata", "invalid_type")
    if len(metadata) > 16:
        message = f"Invalid 'metadata': too many properties. Expected at most 16 properties, but got {len(metadata)}."
        return _error(400, message, "metadata", "object_above_max_properties")
    for key, value in metadata.items():
        param = f"metadata.{key}"
        if not isinstance(value, str):
            return _error(400, _type_message(param, "a string", value), param, "invalid_type")
        if len(key) > 64 or len(value) > 512:
            message = f"Invalid '{param}': keys are at most 64 characters and values at most 512."
            return _error(400, message, param, "string_above_max_length")
    return None


def _not_found_file(file_id: str) -> web.Response:
    return _error(404, f"No such File object: {file_id}", "id")


def _not_found_batch(batch_id: str) -> web.Response:
    return _error(404, f"No batch found with id '{batch_id}'.")


def _page(items: list[Any], limit: int, after: str | None, ids: Callable[[Any], str]) -> dict[str, Any]:
    """One page of a list, newest first, with OpenAI's cursor fields."""
    start = 0
    if after is not None:
        found = [i for i, item in enumerate(items) if ids(item) == after]
        start = found[0] + 1 if found else len(items)
    page = items[start : start + limit]
    return {
        "object": "list",
        "data": [item.to_dict() for item in page],
        "first_id": ids(page[0]) if page else None,
        "last_id": ids(page[-1]) if page else None,
        "has_more": start + limit < len(items),
    }


class Batches:
    """The Files + Batches API of one fault server: its routes, state, faults, runners and bookkeeping.

    It answers rows through the server's own parts (``pick_fault``, ``digest``, ``length``, ``config``), so a row
    is answered exactly as an online request would be. Handlers and runners run on the server's loop; the
    python API (faults, settings, release, stats, reset) may be called from any thread.
    """

    def __init__(
        self, pick_fault: PickFault, digest: Digest, length: Length, config: Callable[[], Config], created: int
    ) -> None:
        self._pick_fault = pick_fault
        self._digest = digest
        self._length = length
        self._config = config
        self._created = created
        self._lock = threading.Lock()
        self._settings = dict(BATCH_DEFAULTS)
        self._rules: list[BatchRule] = []
        self._files: dict[str, FileRecord] = {}
        self._batches: dict[str, BatchRecord] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._release_gen = 0
        self._prefix = os.urandom(4).hex()
        self._seq = itertools.count(1)
        self._reset_books()

    # ------------------------------------------------------------------ python API

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/files", self._handle_upload)
        router.add_get("/v1/files", self._handle_list_files)
        router.add_get("/v1/files/{file_id}", self._handle_get_file)
        router.add_delete("/v1/files/{file_id}", self._handle_delete_file)
        router.add_get("/v1/files/{file_id}/content", self._handle_file_content)
        router.add_post("/v1/batches", self._handle_create)
        router.add_get("/v1/batches", self._handle_list)
        router.add_get("/v1/batches/{batch_id}", self._handle_get)
        router.add_post("/v1/batches/{batch_id}/cancel", self._handle_cancel)
        router.add_get("/_control/batch_faults", self._handle_list_faults)
        router.add_post("/_control/batch_faults", self._handle_add_faults)
        router.add_delete("/_control/batch_faults", self._handle_clear_faults)
        router.add_post("/_control/batch_configure", self._handle_configure)
        router.add_post("/_control/batch_release", self._handle_release)

    @property
    def settings(self) -> dict[str, float]:
        return dict(self._settings)

    def configure(self, **settings: Any) -> dict[str, float]:
        """Phase durations (``*_s``, seconds >= 0) and limits (``max_lines``, ``max_bytes``, >= 1)."""
        unknown = set(settings) - set(BATCH_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown batch setting(s): {sorted(unknown)}; expected {sorted(BATCH_DEFAULTS)}")
        new = dict(self._settings)
        for name, value in settings.items():
            number = float(value) if name.endswith("_s") else int(value)
            if number < (0 if name.endswith("_s") else 1):
                raise ValueError(f"{name} must be >= {0 if name.endswith('_s') else 1}")
            new[name] = number
        self._settings = new
        return dict(new)

    def add_fault(self, fault: str, match: str | None = None, times: int | None = None, **kw: Any) -> dict[str, Any]:
        rule = BatchRule.from_dict({"fault": fault, "match": match, "times": times, **kw})
        with self._lock:
            self._rules.append(rule)
        return rule.to_dict()

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_dict() for rule in self._rules]

    def release(self) -> int:
        """End every current ``stall`` (later batches still stall by the rules); returns how many were held."""
        with self._lock:
            held = sum(1 for batch in self._batches.values() if batch.stalled)
            self._release_gen += 1
        return held

    def submissions(self) -> dict[str, int]:
        """custom_id → how many created batches held it (whatever became of them)."""
        with self._lock:
            return dict(self._submissions)

    def answers(self) -> dict[str, int]:
        """custom_id → how many times a row with it was answered (200 or error): what a provider would bill."""
        with self._lock:
            return dict(self._answers)

    def file_content(self, file_id: str) -> bytes:
        """A stored file's bytes (what a client uploaded)."""
        with self._lock:
            return self._files[file_id].data

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "settings": dict(self._settings),
                "faults": [rule.to_dict() for rule in self._rules],
                "submissions": dict(self._submissions),
                "answers": dict(self._answers),
                "rows": self._rows,
                "rows_per_key": dict(self._rows_per_key),
                "row_status_counts": {str(k): v for k, v in self._row_status.items()},
                "fault_counts": dict(self._fault_counts),
                "created": [self._batches[i].summary() for i in self._created_ids if i in self._batches],
                "files": [dict(summary) for summary in self._file_books],
            }

    def reset_stats(self) -> None:
        """Clear the bookkeeping; the files and batches stay."""
        with self._lock:
            self._reset_books()

    def reset(self) -> None:
        """Drop everything: bookkeeping, files, batches (their runners stop), rules and settings."""
        with self._lock:
            self._reset_books()
            for batch in self._batches.values():
                batch.dropped = True
            self._batches.clear()
            self._files.clear()
            self._rules.clear()
            self._settings = dict(BATCH_DEFAULTS)
            self._release_gen += 1

    def _reset_books(self) -> None:
        self._submissions: dict[str, int] = {}
        self._answers: dict[str, int] = {}
        self._rows = 0
        self._rows_per_key: dict[str, int] = {}
        self._row_status: dict[int, int] = {}
        self._fault_counts: dict[str, int] = {}
        self._created_ids: list[str] = []
        self._file_books: list[dict[str, Any]] = []
        """Every file stored since the last reset: id, filename, purpose, bytes, rows, deleted."""

    def _token(self) -> str:
        return f"{self._prefix}{next(self._seq):08x}"

    async def answer(
        self, row: Row, rule: Rule | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, body) of ``POST /v1/chat/completions`` non-streamed for the row's body; ``rule`` None: the
        server's own fault rules decide, as for an online request."""
        key, prompt_tokens = self._digest(row.body["messages"])
        if rule is None:
            model = row.body.get("model")
            rule = self._pick_fault(key, False, model if isinstance(model, str) else None)
        cfg = self._config()
        n, finish_reason = self._length(row.body, cfg)
        entry: dict[str, Any] = {"key": key, "stream": False, "prompt_tokens": prompt_tokens, "completion_tokens": 0}
        entry.update(status=None, fault=None if rule is None else rule.kind)
        request = cast(web.Request, SimpleNamespace(headers=headers or {}))  # only a 401 reads it (the key)
        reply = _Captured(
            request=request,
            body=row.body,
            entry=entry,
            cfg=cfg,
            headers={},
            rule=rule,
            n=n,
            finish_reason=finish_reason,
            created=self._created,
            end=_no_end,
        )
        await _respond(reply, rule, f"chatcmpl-batch{self._token()}")
        return reply.status, json.loads(reply.payload)

    # ------------------------------------------------------------------ files

    def _store_file(self, filename: str, purpose: str, data: bytes) -> FileRecord:
        record = FileRecord(f"file-{self._token()}", filename, purpose, data, _now())
        with self._lock:
            self._files[record.id] = record
            self._file_books.append({**record.summary(), "deleted": False})
        return record

    async def _handle_upload(self, request: web.Request) -> web.Response:
        try:
            upload = await _read_upload(request, int(self._settings["max_bytes"]))
        except (ValueError, RuntimeError, AssertionError, LookupError, TypeError, HttpProcessingError) as exc:
            return _error(400, f"The body is not a multipart/form-data file upload ({exc}); send purpose and file.")
        if upload.too_large:
            return _error(400, "File is too large.")
        for name, value in (("purpose", upload.purpose), ("file", upload.data)):
            if value is None:
                return _error(400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        assert upload.purpose is not None and upload.data is not None
        if upload.purpose not in PURPOSES:
            supported = ", ".join(repr(p) for p in PURPOSES)
            message = f"Invalid value: {upload.purpose!r}. Supported values are: {supported}."
            return _error(400, message, "purpose", "invalid_value")
        if upload.purpose == "batch" and (problem := upload_format_error(upload.data)) is not None:
            return _error(400, problem, "file")
        record = self._store_file(upload.filename, upload.purpose, upload.data)
        return web.json_response(record.to_dict())

    async def _handle_list_files(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        with self._lock:
            files = [f for f in reversed(self._files.values()) if purpose is None or f.purpose == purpose]
        return web.json_response(_page(files, len(files), None, lambda f: f.id))

    async def _handle_get_file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        record = self._files.get(file_id)
        return _not_found_file(file_id) if record is None else web.json_response(record.to_dict())

    async def _handle_file_content(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        record = self._files.get(file_id)
        if record is None:
            return _not_found_file(file_id)
        return web.Response(body=record.data, content_type="application/octet-stream")

    async def _handle_delete_file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        with self._lock:
            record = self._files.pop(file_id, None)
            for summary in self._file_books:
                summary["deleted"] = summary["deleted"] or summary["id"] == file_id
        if record is None:
            return _not_found_file(file_id)
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    # ------------------------------------------------------------------ batches: the HTTP side

    async def _handle_create(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        if not isinstance(data, dict):
            return _error(400, "The request body must be a JSON object: input_file_id, endpoint, completion_window.")
        refused = self._create_error(data)
        if refused is not None:
            return refused
        batch = self._new_batch(data, {"Authorization": request.headers.get("Authorization", "")})
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(batch.to_dict())

    def _create_error(self, data: dict[str, Any]) -> web.Response | None:
        """What ``POST /v1/batches`` refuses outright (a 400), before any batch exists."""
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in data:
                return _error(400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
            if not isinstance(data[name], str):
                return _error(400, _type_message(name, "a string", data[name]), name, "invalid_type")
        if data["endpoint"] not in ENDPOINTS:
            supported = ", ".join(repr(e) for e in ENDPOINTS)
            message = f"Invalid value: {data['endpoint']!r}. Supported values are: {supported}."
            return _error(400, message, "endpoint", "invalid_value")
        if data["completion_window"] != "24h":
            message = f"Invalid value: {data['completion_window']!r}. Supported values are: '24h'."
            return _error(400, message, "completion_window", "invalid_value")
        return _metadata_error(data.get("metadata"))

    def _new_batch(self, data: dict[str, Any], headers: dict[str, str]) -> BatchRecord:
        """The batch as created: its file read once now (a later delete of the file changes nothing)."""
        settings = dict(self._settings)
        file = self._files.get(data["input_file_id"])
        validation = None
        if file is not None:
            validation = validate_lines(file.data, data["endpoint"], int(settings["max_lines"]))
            for row in validation.rows:
                row.key = self._digest(row.body["messages"])[0]
        batch = BatchRecord(
            id=f"batch_{self._token()}",
            endpoint=data["endpoint"],
            input_file_id=data["input_file_id"],
            completion_window=data["completion_window"],
            metadata=data.get("metadata"),
            created_at=_now(),
            settings=settings,
            validation=validation,
            headers=headers,
        )
        with self._lock:
            self._batches[batch.id] = batch
            self._created_ids.append(batch.id)
            for custom_id in [] if validation is None else validation.custom_ids:
                self._submissions[custom_id] = self._submissions.get(custom_id, 0) + 1
        return batch

    async def _handle_get(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        batch = self._batches.get(batch_id)
        return _not_found_batch(batch_id) if batch is None else web.json_response(batch.to_dict())

    async def _handle_list(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", "20")
        limit = int(raw) if raw.isdigit() and len(raw) < 5 else 0
        if not 1 <= limit <= 100:
            return _error(
                400, f"Invalid 'limit': {raw!r}; expected an integer from 1 to 100.", "limit", "invalid_value"
            )
        with self._lock:
            batches = list(reversed(self._batches.values()))
        return web.json_response(_page(batches, limit, request.query.get("after"), lambda b: b.id))

    async def _handle_cancel(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        batch = self._batches.get(batch_id)
        if batch is None:
            return _not_found_batch(batch_id)
        with self._lock:
            if batch.status in ("completed", "failed", "expired"):
                return _error(409, f"Cannot cancel a batch with status '{batch.status}'.")
            if batch.status not in ("cancelling", "cancelled"):
                batch.status, batch.cancelling_at, batch.cancel_requested = "cancelling", _now(), True
        return web.json_response(batch.to_dict())

    # ------------------------------------------------------------------ batches: the runner

    def _set(self, batch: BatchRecord, **fields: Any) -> None:
        with self._lock:
            if batch.status == "cancelling" and fields.get("status") not in (None, "cancelled"):
                return  # a cancel wins over whatever the runner was about to do
            for name, value in fields.items():
                setattr(batch, name, value)

    async def _run(self, batch: BatchRecord) -> None:
        try:
            await self._lifecycle(batch)
        except Exception as exc:  # a bug in here must show in the batch, not leave a test polling forever
            self._set(batch, status="failed", failed_at=_now(), errors=[_batch_error("internal_error", repr(exc))])

    async def _lifecycle(self, batch: BatchRecord) -> None:
        """validating → in_progress → finalizing → completed (or failed, expired, cancelled on the way)."""
        if not await self._wait(batch, batch.settings["validating_s"]):
            return await self._cancelled(batch)
        errors = self._validation_errors(batch)
        if errors:
            self._set(batch, status="failed", failed_at=_now(), errors=errors)
            return None
        self._set(batch, status="in_progress", in_progress_at=_now(), total=len(batch.rows))
        expired = await self._answer_rows(batch, batch.settings["in_progress_s"])
        if batch.cancel_requested or batch.dropped:
            return await self._cancelled(batch)
        if expired:
            self._expire(batch, expired)
            return None
        self._set(batch, status="finalizing", finalizing_at=_now())
        if not await self._wait(batch, self._finalizing_s(batch)):
            return await self._cancelled(batch)
        self._write_files(batch)
        self._set(batch, status="completed", completed_at=_now())
        return None

    async def _wait(
        self, batch: BatchRecord, seconds: float | None, release_gen: int | None = None, cancellable: bool = True
    ) -> bool:
        """Sleep ``seconds`` (None: until released); False when a cancel or a reset cut it short."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            if batch.dropped or (cancellable and batch.cancel_requested):
                return False
            if release_gen is not None and self._release_gen != release_gen:
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return True
            await asyncio.sleep(_POLL_S if deadline is None else min(_POLL_S, deadline - now))

    async def _cancelled(self, batch: BatchRecord) -> None:
        """cancelling → cancelled: the rows answered so far are kept in the output and error files."""
        if batch.dropped:
            return
        await self._wait(batch, batch.settings["cancelling_s"], cancellable=False)
        self._write_files(batch)
        self._set(batch, status="cancelled", cancelled_at=_now())

    def _validation_errors(self, batch: BatchRecord) -> list[dict[str, Any]]:
        if batch.validation is None:
            message = (
                f"Cannot find file {batch.input_file_id}, or organization org-fault-server does not have access to it."
            )
            return [_batch_error("invalid_request", message, param="file_id")]
        if batch.validation.errors:
            return list(batch.validation.errors)
        taken = self._batch_rule("validation_failed", batch)
        if taken is None:
            return []
        rule, row = taken
        line = rule.line if rule.line is not None or rule.match is None else row.line
        message = rule.message or "The batch failed validation (injected fault)."
        return [_batch_error(rule.code, message, line, rule.param)]

    def _finalizing_s(self, batch: BatchRecord) -> float:
        taken = self._batch_rule("slow_finalizing", batch)
        return batch.settings["finalizing_s"] if taken is None else taken[0].seconds

    def _batch_rule(
        self, kind: str, batch: BatchRecord, rows: Iterable[Row] | None = None, at: int | None = None
    ) -> tuple[BatchRule, Row] | None:
        """The first rule of ``kind`` that matches a row of the batch (fires once per batch), and that row.

        ``at``: the index of the row the batch has reached (a ``stall`` waits for its ``after_rows``)."""
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.kind != kind or rule.id in batch.fired or (at is not None and at < rule.after_rows):
                    continue
                row = next((r for r in (batch.rows if rows is None else rows) if rule.matches(r.key)), None)
                if row is not None:
                    batch.fired.add(rule.id)
                    self._count_fault(kind)
                    return rule.fire(), row
        return None

    def _row_rule(self, key: str) -> BatchRule | None:
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.kind in _ROW_KINDS and rule.matches(key):
                    self._count_fault(rule.kind)
                    return rule.fire()
        return None

    def _count_fault(self, kind: str) -> None:
        self._fault_counts[kind] = self._fault_counts.get(kind, 0) + 1

    async def _answer_rows(self, batch: BatchRecord, seconds: float) -> list[Row]:
        """Answer the rows one by one, spread over ``seconds``; returns the rows left to expire."""
        rows = batch.rows
        step = seconds / len(rows) if rows else 0.0
        due = time.monotonic()
        expired: list[Row] = []
        for index, row in enumerate(rows):
            if batch.cancel_requested or batch.dropped:
                break
            # decided with no await since the last row was counted: a client that sees N rows done sees it held
            stall = self._batch_rule("stall", batch, [row], at=index)
            if stall is not None:
                if not await self._stall(batch, stall[0]):
                    break
                due = time.monotonic()
            due += step
            delay = due - time.monotonic()
            if delay > 0.001:
                if not await self._wait(batch, delay):
                    break
            elif index % 64 == 63:
                await asyncio.sleep(0)  # many rows due at once: let the polls in between
            rule = self._row_rule(row.key)
            if rule is not None and rule.kind == "row_expire":
                expired.append(row)
                continue
            status, body = await self.answer(row, None if rule is None else rule.as_chat_rule(), batch.headers)
            self._record(batch, row, status, body)
        return expired

    async def _stall(self, batch: BatchRecord, rule: BatchRule) -> bool:
        with self._lock:
            batch.stalled = True
            gen = self._release_gen
        try:
            return await self._wait(batch, rule.stall_s, release_gen=gen)
        finally:
            batch.stalled = False

    def _record(self, batch: BatchRecord, row: Row, status: int, body: Any) -> None:
        response = {"status_code": status, "request_id": f"req_{self._token()}", "body": body}
        line = {"id": f"batch_req_{self._token()}", "custom_id": row.custom_id, "response": response, "error": None}
        encoded = json.dumps(line).encode()
        usage = body.get("usage") if isinstance(body, dict) else None
        with self._lock:
            if status == 200:
                batch.output.append(encoded)
                batch.completed += 1
                if isinstance(usage, dict):
                    batch.input_tokens += int(usage.get("prompt_tokens") or 0)
                    batch.output_tokens += int(usage.get("completion_tokens") or 0)
            else:
                batch.error_lines.append(encoded)
                batch.failed += 1
            self._rows += 1
            self._rows_per_key[row.key] = self._rows_per_key.get(row.key, 0) + 1
            self._row_status[status] = self._row_status.get(status, 0) + 1
            self._answers[row.custom_id] = self._answers.get(row.custom_id, 0) + 1

    def _expire(self, batch: BatchRecord, rows: list[Row]) -> None:
        """The window closed on these rows: they come back as ``batch_expired`` errors, the batch ends expired."""
        for row in rows:
            error = {"code": "batch_expired", "message": EXPIRED_MESSAGE}
            line = {"id": f"batch_req_{self._token()}", "custom_id": row.custom_id, "response": None, "error": error}
            batch.error_lines.append(json.dumps(line).encode())
        self._write_files(batch)
        self._set(batch, status="expired", expired_at=_now(), failed=batch.failed + len(rows))

    def _write_files(self, batch: BatchRecord) -> None:
        """The output and error files, each only when it has lines (as OpenAI: no file, no id)."""
        for lines, suffix, attr in (
            (batch.output, "output", "output_file_id"),
            (batch.error_lines, "error", "error_file_id"),
        ):
            if lines:
                record = self._store_file(f"{batch.id}_{suffix}.jsonl", "batch_output", b"\n".join(lines) + b"\n")
                setattr(batch, attr, record.id)
                lines.clear()  # the file holds them now: a 50,000-row batch is not kept twice

    # ------------------------------------------------------------------ control API

    async def _handle_list_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": self.faults()})

    async def _handle_add_faults(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        try:
            rules = [BatchRule.from_dict(d) for d in (data if isinstance(data, list) else [data])]
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        with self._lock:
            self._rules.extend(rules)
        return web.json_response({"faults": self.faults()})

    async def _handle_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"faults": []})

    async def _handle_configure(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        try:
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object of batch settings")
            settings = self.configure(**data)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"settings": settings})

    async def _handle_release(self, request: web.Request) -> web.Response:
        return web.json_response({"released": self.release()})
