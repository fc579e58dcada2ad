"""Hand-written chains: each a builder that takes any chat model and returns a plain LCEL Runnable.

Another LangChain app imports a builder, gives it its own model, and composes
the result further (``|``, ``.with_config``, ``astream_events``)::

    from chains import build_story_chain
    chain = build_story_chain(ChatOpenAI(model="gpt-4o-mini")) | my_next_step
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnablePassthrough

from chains.engine.callbacks import INTERMEDIATE
from chains.spec.prompt_spec import PromptSpec
from chains.spec.prompts_library import PromptLibrary, default_library
from chains.spec.repair import repairing


def compile_spec(spec: PromptSpec, model: BaseChatModel) -> Runnable[dict[str, Any], Any]:
    """A prompt file as a chain: ``prompt | model (with the file's parameters) | parser``."""
    params = spec.model_kwargs()
    response_format = spec.response_format()
    if response_format is not None:
        params["response_format"] = response_format
    llm: Runnable[Any, Any] = model.bind(**params) if params else model
    if spec.output.kind == "json":  # a broken answer is asked again with the validator's words (spec.repair)
        chain = repairing(spec.to_prompt(), llm, spec.output_parser(), attempts=spec.output.repair_attempts)
    else:
        chain = spec.to_prompt() | llm | spec.output_parser()
    return chain.with_config(run_name=spec.name)


def build_story_chain(model: BaseChatModel, *, library: PromptLibrary | None = None) -> Runnable[dict[str, Any], str]:
    """``{topic}`` → a short outline (``story_outline``) → the story written from it (``story``)."""
    prompts = library or default_library()
    outline = compile_spec(prompts.spec("story_outline"), model).with_config(run_name="outline", tags=[INTERMEDIATE])
    story = compile_spec(prompts.spec("story"), model)
    return (RunnablePassthrough.assign(outline=outline) | story).with_config(run_name="story")


def build_summarize_chain(
    model: BaseChatModel, *, library: PromptLibrary | None = None
) -> Runnable[dict[str, Any], str]:
    """``{text, sentences?}`` → a summary."""
    prompts = library or default_library()
    return compile_spec(prompts.spec("summarize"), model)


def build_translate_chain(
    model: BaseChatModel, *, library: PromptLibrary | None = None
) -> Runnable[dict[str, Any], str]:
    """``{text, language}`` → the text in that language."""
    prompts = library or default_library()
    return compile_spec(prompts.spec("translate"), model)
