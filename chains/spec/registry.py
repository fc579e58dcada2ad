"""The chain registry: hand-written chains plus one chain per prompt file.

``list_chains()`` describes every chain; ``get_chain(name, model=None)``
builds one as a plain LCEL Runnable.  A prompt file with no hand-written chain
becomes ``prompt | model | parser`` by itself, so dropping ``prompts/foo.yaml``
adds a chain called ``foo``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chains.errors import UnknownChainError
from chains.spec.prompts_library import PromptLibrary, default_library

if TYPE_CHECKING:  # building chains imports LangChain; listing them does not
    from langchain_core.language_models import BaseChatModel
    from langchain_core.runnables import Runnable

log = logging.getLogger("chains")

Builder = Callable[..., "Runnable[Any, Any]"]


@dataclass(frozen=True)
class HandWritten:
    builder: str
    """``module:function`` of the builder, imported when the chain is built."""
    prompts: tuple[str, ...]
    """The prompt files the chain is built from; the first one's inputs are the chain's."""
    description: str | None = None


HAND_WRITTEN: dict[str, HandWritten] = {
    "story": HandWritten(
        "chains.spec.definitions:build_story_chain",
        ("story_outline", "story"),
        "Write a children's story about a topic: a short outline first, then the story from it.",
    ),
    "summarize": HandWritten("chains.spec.definitions:build_summarize_chain", ("summarize",)),
    "translate": HandWritten("chains.spec.definitions:build_translate_chain", ("translate",)),
}


@dataclass(frozen=True)
class ChainInfo:
    """What a user needs to know to call a chain."""

    name: str
    description: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    kind: str
    sources: tuple[str, ...]
    digest: str
    """Hash of the chain's name and prompt files: changes when a prompt changes."""
    output_schema: dict[str, Any] | None = None
    prompts: tuple[str, ...] = ()
    """The names of its prompt files, in the order it uses them (``sources`` are their labels)."""


def _digest(name: str, digests: list[str]) -> str:
    return hashlib.sha256("\n".join([name, *digests]).encode()).hexdigest()[:16]


def chain_info(name: str, library: PromptLibrary | None = None) -> ChainInfo:
    prompts = library or default_library()
    entry = HAND_WRITTEN.get(name)
    if entry is not None:
        specs = [prompts.spec(p) for p in entry.prompts]
        first = specs[0]
        return ChainInfo(
            name=name,
            description=entry.description or first.description,
            required=tuple(first.required_variables),
            optional=tuple(first.optional_variables),
            kind="hand-written",
            sources=tuple(prompts.label(p) for p in entry.prompts),
            digest=_digest(name, [s.digest for s in specs]),
            output_schema=specs[-1].output.json_schema,
            prompts=entry.prompts,
        )
    if name not in prompts:
        raise UnknownChainError(name, list_chain_names(prompts))
    spec = prompts.spec(name)
    return ChainInfo(
        name=name,
        description=spec.description,
        required=tuple(spec.required_variables),
        optional=tuple(spec.optional_variables),
        kind="prompt",
        sources=(prompts.label(name),),
        digest=_digest(name, [spec.digest]),
        output_schema=spec.output.json_schema,
        prompts=(name,),
    )


def list_chain_names(library: PromptLibrary | None = None) -> list[str]:
    prompts = library or default_library()
    return sorted(set(HAND_WRITTEN) | set(prompts.names()))


def list_chains(library: PromptLibrary | None = None) -> list[ChainInfo]:
    """Every chain: the hand-written ones and one per prompt file."""
    return [chain_info(name, library) for name in list_chain_names(library)]


def default_model() -> BaseChatModel:
    """The model used when none is given: OpenAI with a key, else the offline model."""
    from chains.providers.models import ModelSession

    session = ModelSession()
    if session.notice:
        log.warning(session.notice)
    return session.model


def get_chain(
    name: str, model: BaseChatModel | None = None, *, library: PromptLibrary | None = None
) -> Runnable[Any, Any]:
    """Build chain ``name`` on ``model`` (default: see ``default_model``) as a plain Runnable."""
    prompts = library or default_library()
    entry = HAND_WRITTEN.get(name)
    if entry is None and name not in prompts:
        raise UnknownChainError(name, list_chain_names(prompts))
    llm = model if model is not None else default_model()
    if entry is not None:
        module, _, function = entry.builder.partition(":")
        builder: Builder = getattr(importlib.import_module(module), function)
        return builder(llm, library=prompts)
    from chains.spec.definitions import compile_spec

    return compile_spec(prompts.spec(name), llm)
