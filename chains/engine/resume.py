"""``--resume``: which inputs already have a success record, keyed so that a change re-runs them.

An input's key hashes the chain (its name and prompt files' contents), the
input itself, and the model with its parameters.  Change a prompt, the model
or ``--temperature`` and the input runs again; change nothing and a resumed
run makes no request for it.

What is "the same model" (``model_identity``): the provider and model name
(``openai:gpt-4o-mini``), plus where it is served from:

- no ``--base-url``, or OpenAI's own ``https://api.openai.com/v1``: nothing more;
- a remote endpoint: its scheme, host and path, normalised (host lower-cased,
  the scheme's default port dropped, no trailing slash), so ``https://API.x.com:443/v1/``
  is ``https://api.x.com/v1``; another host, port or path is another model;
- any loopback host (``localhost``, ``127.0.0.0/8``, ``::1``, ``0.0.0.0``): just
  ``local``, whatever the port or path: a local server restarted on a new port
  serves the same model, and must not re-run (and re-pay) a finished run.

The API key, the timeout, retries and limits are not part of it: they change
how a request is made, not what it answers.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

OPENAI_ENDPOINT = "https://api.openai.com/v1"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def model_identity(model: str, base_url: str | None) -> str:
    """The model as part of resume keys: ``model`` plus its normalised endpoint (see the module docstring)."""
    endpoint = normalise_endpoint(base_url) if base_url else None
    return model if endpoint in (None, OPENAI_ENDPOINT) else f"{model}@{endpoint}"


def normalise_endpoint(base_url: str) -> str:
    """``local`` for a loopback host, else ``scheme://host[:port]/path`` without the default port or trailing slash."""
    try:
        parts = urlsplit(base_url.strip())
        port = parts.port
    except ValueError:  # not a URL settings would accept; keep it apart from every real endpoint
        return base_url
    host = (parts.hostname or "").lower().rstrip(".")
    if is_loopback(host):
        return "local"
    scheme = parts.scheme.lower()
    if ":" in host:  # IPv6 literal: back in its brackets
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def is_loopback(host: str) -> bool:
    """``localhost`` (and ``*.localhost``), 127.0.0.0/8, ``::1``, or the unspecified address (this machine)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_loopback or address.is_unspecified


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
