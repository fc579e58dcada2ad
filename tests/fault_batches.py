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

The pieces: ``fault_batch_input`` (the input file: upload check, validation, rows), ``fault_batch_rules`` (batch
fault rules), ``fault_batch_store`` (the File and Batch objects, the state, the python API and bookkeeping),
``fault_batch_rows`` (how a batch runs: its rows answered, its faults fired); here, the HTTP routes over them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from fault_batch_input import MAX_ERRORS, Row, Validation, type_message, upload_format_error, validate_lines
from fault_batch_rows import BatchRows, Digest, Length, PickFault
from fault_batch_rules import BATCH_FAULT_KINDS, BatchRule
from fault_batch_store import BATCH_DEFAULTS, BatchRecord, now
from fault_replies import error_body
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

ENDPOINTS = ("/v1/chat/completions",)
PURPOSES = ("assistants", "batch", "evals", "fine-tune", "user_data", "vision")
_READ_CHUNK = 64 * 1024


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None, type_: str = "invalid_request_error"
) -> web.Response:
    """An error answered the way OpenAI words its own: ``{"error": {message, type, param, code}}``."""
    return web.Response(status=status, body=error_body(message, type_, code, param), content_type="application/json")


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
        return _error(400, type_message("metadata", "an object", metadata), "metadata", "invalid_type")
    if len(metadata) > 16:
        message = f"Invalid 'metadata': too many properties. Expected at most 16 properties, but got {len(metadata)}."
        return _error(400, message, "metadata", "object_above_max_properties")
    for key, value in metadata.items():
        param = f"metadata.{key}"
        if not isinstance(value, str):
            return _error(400, type_message(param, "a string", value), param, "invalid_type")
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


class Batches(BatchRows):
    """The Files + Batches API of one fault server: its routes over the state (``BatchState``) and the runners
    (``BatchRows``).

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
        super().__init__()

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

    # ------------------------------------------------------------------ files

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
                return _error(400, type_message(name, "a string", data[name]), name, "invalid_type")
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
            created_at=now(),
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
                batch.status, batch.cancelling_at, batch.cancel_requested = "cancelling", now(), True
        return web.json_response(batch.to_dict())

    # ------------------------------------------------------------------ control API

    async def _handle_list_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": self.faults()})

    async def _handle_add_faults(self, request: web.Request) -> web.Response:
        try:
            self.add_faults(await _json_body(request))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
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
