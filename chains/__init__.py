"""chain-runner: declarative prompts compiled to LCEL chains, run at scale.

    from chains import get_chain, run_batch, RunSettings, ModelSession

    async with ModelSession(RunSettings(max_concurrency=8)) as session:
        chain = get_chain("story", session.model)
        batch = run_batch(chain, [{"topic": "a brave snail"}], settings=session.settings, limits=session.limits)
        async for record in batch:
            print(record.output)
        print(batch.summary.to_dict())

Names are imported lazily so that ``import chains`` stays cheap; so is ``__version__``
(the installed package's version, or ``pyproject.toml``'s in a checkout that is not installed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "run_on_ray": "chains.scale.ray_engine",
    "RayRun": "chains.scale.ray_engine",
    "merge_records": "chains.io.merge",
    "get_chain": "chains.spec.registry",
    "list_chains": "chains.spec.registry",
    "chain_info": "chains.spec.registry",
    "ChainInfo": "chains.spec.registry",
    "build_story_chain": "chains.spec.definitions",
    "build_summarize_chain": "chains.spec.definitions",
    "build_translate_chain": "chains.spec.definitions",
    "compile_spec": "chains.spec.definitions",
    "PromptLibrary": "chains.spec.prompts_library",
    "PromptSpec": "chains.spec.prompt_spec",
    "load_spec": "chains.spec.prompt_spec",
    "run_batch": "chains.engine.execution",
    "stream_one": "chains.engine.execution",
    "BatchRun": "chains.engine.execution",
    "Record": "chains.engine.execution",
    "StreamEvent": "chains.engine.execution",
    "RunSettings": "chains.settings",
    "ModelSession": "chains.providers.models",
    "ManagedChatModel": "chains.providers.managed",
    "FakeChatModel": "chains.providers.fake",
    "Limits": "chains.engine.limits",
    "RunSummary": "chains.engine.metrics",
    "ItemMetrics": "chains.engine.metrics",
    "MetricsHandler": "chains.engine.callbacks",
    "TokenStreamHandler": "chains.engine.callbacks",
}

__all__ = [
    "BatchRun",
    "ChainInfo",
    "FakeChatModel",
    "ItemMetrics",
    "Limits",
    "ManagedChatModel",
    "MetricsHandler",
    "ModelSession",
    "PromptLibrary",
    "PromptSpec",
    "RayRun",
    "Record",
    "RunSettings",
    "RunSummary",
    "StreamEvent",
    "TokenStreamHandler",
    "__version__",
    "build_story_chain",
    "build_summarize_chain",
    "build_translate_chain",
    "chain_info",
    "compile_spec",
    "get_chain",
    "list_chains",
    "load_spec",
    "merge_records",
    "run_batch",
    "run_on_ray",
    "stream_one",
]


def _version() -> str:
    """The installed distribution's version; from a checkout that is not installed, ``pyproject.toml``'s."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chain-runner")
    except PackageNotFoundError:
        pass
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chains' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from chains.engine.callbacks import MetricsHandler, TokenStreamHandler
    from chains.engine.execution import BatchRun, Record, StreamEvent, run_batch, stream_one
    from chains.engine.limits import Limits
    from chains.engine.metrics import ItemMetrics, RunSummary
    from chains.io.merge import merge_records
    from chains.providers.fake import FakeChatModel
    from chains.providers.managed import ManagedChatModel
    from chains.providers.models import ModelSession
    from chains.scale.ray_engine import RayRun, run_on_ray
    from chains.settings import RunSettings
    from chains.spec.definitions import (
        build_story_chain,
        build_summarize_chain,
        build_translate_chain,
        compile_spec,
    )
    from chains.spec.prompt_spec import PromptSpec, load_spec
    from chains.spec.prompts_library import PromptLibrary
    from chains.spec.registry import ChainInfo, chain_info, get_chain, list_chains

    __version__: str
