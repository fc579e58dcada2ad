"""Server-sent events from outside: the ``data`` of each event, bounded, as bytes.

OpenAI-compatible servers stream a chat completion as ``data: {json}`` events, one per chunk, ended by
``data: [DONE]``.  ``SSEDecoder`` is the whole parser (sync, incremental: ``feed`` bytes, get the finished
events' data); ``events`` drives it from an aiohttp response.  Lines end with ``\\n`` or ``\\r\\n``; comments
(``:``), ``event:``, ``id:`` and ``retry:`` lines are skipped.  A line or an event longer than ``max_line``
bytes is a ``BrokenStreamError`` (the attempt failed), never unbounded memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from chains.engine.retry import BrokenStreamError

MAX_LINE_BYTES = 8 * 1024 * 1024
"""The longest SSE line (and event) accepted: one chunk of a chat completion is far smaller."""
DONE = b"[DONE]"


class SSEDecoder:
    """Bytes in, the data of finished events out; ``close`` says whether anything was left unfinished."""

    __slots__ = ("_data", "_pending", "_pending_len", "max_line")

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event that ``chunk`` finishes (``[DONE]`` included, as it came)."""
        if b"\n" not in chunk:  # part of a line: kept (bounded) until its end comes
            self._pending.append(chunk)
            self._pending_len += len(chunk)
            if self._pending_len > self.max_line:
                raise BrokenStreamError(f"a stream line is longer than {self.max_line} bytes")
            return []
        buffer = b"".join((*self._pending, chunk)) if self._pending else chunk
        lines = buffer.split(b"\n")
        last = lines.pop()
        self._pending, self._pending_len = ([last], len(last)) if last else ([], 0)
        if self._pending_len > self.max_line:
            raise BrokenStreamError(f"a stream line is longer than {self.max_line} bytes")
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    self._data = data = []
                continue
            if len(line) > self.max_line:
                raise BrokenStreamError(f"a stream line is longer than {self.max_line} bytes")
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
                if len(data) > 1 and sum(map(len, data)) > self.max_line:
                    raise BrokenStreamError(f"a stream event is longer than {self.max_line} bytes")
            # comments (":"), "event:", "id:", "retry:" and unknown fields are not data
        return out

    def close(self) -> list[bytes]:
        """The stream ended: an event its server finished without the blank line still counts."""
        out = self.feed(b"\n\n") if self._pending or self._data else []
        self._pending, self._pending_len, self._data = [], 0, []
        return out


async def events(response: Any, max_line: int = MAX_LINE_BYTES) -> AsyncIterator[bytes]:
    """The data of each event of an aiohttp response, up to ``[DONE]`` (not included) or the end."""
    decoder = SSEDecoder(max_line)
    async for chunk in response.content.iter_any():
        for data in decoder.feed(chunk):
            if data == DONE:
                await _drain(response)
                return
            yield data
    for data in decoder.close():
        if data == DONE:
            return
        yield data


DRAIN_BYTES = 64 * 1024
DRAIN_S = 1.0


async def _drain(response: Any) -> None:
    """Read what follows ``[DONE]`` (the body's end: a chunked terminator, at most a few bytes), so that aiohttp puts
    the connection back in the pool: a response left unread is closed, and the next request would open a new
    connection (a new TLS handshake at a provider).  Bounded in bytes and time: past either, the connection is
    simply not reused."""
    read = 0
    try:
        async with asyncio.timeout(DRAIN_S):
            async for chunk in response.content.iter_any():
                read += len(chunk)
                if read > DRAIN_BYTES:
                    return
    except (TimeoutError, OSError, ValueError):
        return
    except Exception as exc:  # aiohttp's own payload errors: the connection is not reused, nothing else
        if type(exc).__module__.startswith("aiohttp"):
            return
        raise
