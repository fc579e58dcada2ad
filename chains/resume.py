"""``--resume``: which inputs already have a success record, keyed so that a change re-runs them.

An input's key hashes the chain (its name and prompt files' contents), the
input itself, and the model with its parameters.  Change a prompt, the model
or ``--temperature`` and the input runs again; change nothing and a resumed
run makes no request for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def input_key(chain_digest: str, model: str, params: Mapping[str, Any]) -> Callable[[Any], str]:
    """A function from an input to its key, for this chain, model and parameters."""
    prefix = json.dumps({"chain": chain_digest, "model": model, "params": dict(params)}, sort_keys=True)

    def key(value: Any) -> str:
        payload = prefix + "\n" + json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    return key


def done_keys(path: str | Path) -> set[str]:
    """Keys of the success records in a JSONL output (a torn last line is ignored)."""
    done: set[str] = set()
    file = Path(path)
    if not file.exists():
        return done
    with file.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that input runs again
            if isinstance(record, dict) and record.get("error") is None and record.get("key"):
                done.add(str(record["key"]))
    return done
