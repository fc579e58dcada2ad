"""``--cache FILE.sqlite``: identical model requests answered locally, through LangChain's cache interface.

A ``BaseCache`` set as the managed model's ``cache``: LangChain looks it up
before the request (so a hit makes no request, waits for no limit and costs
nothing) and stores every answer after it.  The key is LangChain's own: the
serialized messages and the model's identity and parameters.  Hits are marked
on the message (``response_metadata["cache_hit"]``) and counted per input.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

from chains.errors import UsageError
from chains.metrics import current_item


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


def _decode(value: str) -> list[Generation]:
    generations: list[Generation] = []
    for item in json.loads(value):
        if "message" in item:
            generations.append(
                ChatGeneration(message=AIMessage.model_validate(item["message"]), generation_info=item["info"])
            )
        else:
            generations.append(Generation(text=item["text"], generation_info=item["info"]))
    return generations


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

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM generations WHERE prompt = ? AND llm = ?", (prompt, llm_string)
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        generations = _decode(row[0])
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                generation.message.response_metadata["cache_hit"] = True
        self.hits += 1
        item = current_item()
        if item is not None:
            item.cache_hits += 1
        return generations

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
