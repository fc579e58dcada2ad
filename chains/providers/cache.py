"""``--cache FILE.sqlite``: identical model requests answered locally, through LangChain's cache interface.

A ``BaseCache`` set as the managed model's ``cache``: LangChain looks it up
before the request (so a hit makes no request, waits for no limit and costs
nothing) and stores every answer after it.  The key is LangChain's own: the
serialized messages and the model's identity and parameters.  Hits are marked
on the message (``response_metadata["cache_hit"]``) and counted per input.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

from chains.engine.metrics import current_item
from chains.errors import UsageError

logger = logging.getLogger(__name__)


def _encode(generations: RETURN_VAL_TYPE) -> str:
    """Plain JSON (no LangChain object revival on the way back: the file is data, not config)."""
    items: list[dict[str, Any]] = []
    for generation in generations:
        if isinstance(generation, ChatGeneration):
            message = generation.message.model_dump(mode="json")
            message["response_metadata"].pop("headers", None)
            items.append({"message": message, "info": generation.generation_info})
        else:
            items.append({"text": generation.text, "info": generation.generation_info})
    return json.dumps(items)


class CorruptEntry(ValueError):
    """A cached value that is not the JSON ``_encode`` writes (edited, truncated, another tool's)."""


def _decode(value: object) -> list[Generation]:
    """The generations of a cached value; anything else is ``CorruptEntry`` (a miss, never a failed input)."""
    try:
        items = json.loads(value) if isinstance(value, (str, bytes)) else None
        if not isinstance(items, list) or not items:
            raise CorruptEntry("not a list of generations")
        return [_generation(item) for item in items]
    except CorruptEntry:
        raise
    except Exception as exc:  # JSON, pydantic and shape errors alike: the row is unusable, not the run
        raise CorruptEntry(f"{type(exc).__name__}") from exc


def _generation(item: object) -> Generation:
    if not isinstance(item, dict):
        raise CorruptEntry("a generation is not an object")
    info = item.get("info")
    if info is not None and not isinstance(info, dict):
        raise CorruptEntry("generation_info is not an object")
    if "message" in item:
        return ChatGeneration(message=AIMessage.model_validate(item["message"]), generation_info=info)
    if not isinstance(item.get("text"), str):
        raise CorruptEntry("a generation has no text")
    return Generation(text=item["text"], generation_info=info)


class SQLiteCache(BaseCache):
    """A small, thread-safe sqlite cache of chat generations."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS generations ("
                "prompt TEXT NOT NULL, llm TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (prompt, llm))"
            )
        except sqlite3.Error as exc:
            raise UsageError(f"--cache {path}: cannot open it as a sqlite database ({exc}); pick another file") from exc
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM generations WHERE prompt = ? AND llm = ?", (prompt, llm_string)
            ).fetchone()
        generations = self._decoded(row[0]) if row is not None else None
        if generations is None:
            self.misses += 1
            return None
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                generation.message.response_metadata["cache_hit"] = True
        self.hits += 1
        item = current_item()
        if item is not None:
            item.cache_hits += 1
        return generations

    def _decoded(self, value: object) -> list[Generation] | None:
        """The row's generations, or None (a miss: the request is made and the row replaced)."""
        try:
            return _decode(value)
        except CorruptEntry:
            self.corrupt += 1
            if self.corrupt == 1:  # one warning per run, not one per row
                logger.warning(
                    "--cache %s: an entry is not one chain-runner wrote (corrupt or edited); "
                    "such entries are treated as misses, requested again and replaced",
                    self.path,
                )
            return None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        value = _encode(return_val)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO generations (prompt, llm, value) VALUES (?, ?, ?)",
                (prompt, llm_string, value),
            )

    def clear(self, **kwargs: Any) -> None:
        with self._lock:
            self._db.execute("DELETE FROM generations")

    # Local sqlite is fast: run inline, so the per-input context (hit counting) is kept.
    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return self.lookup(prompt, llm_string)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self.update(prompt, llm_string, return_val)

    async def aclear(self, **kwargs: Any) -> None:
        self.clear()

    def close(self) -> None:
        with self._lock:
            self._db.close()
