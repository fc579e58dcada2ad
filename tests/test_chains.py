"""Chains are plain LCEL Runnables: registry, composition with the user's own steps and model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import ProbeModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel

from chains import (
    FakeChatModel,
    ManagedChatModel,
    PromptLibrary,
    build_story_chain,
    build_translate_chain,
    chain_info,
    get_chain,
    list_chains,
)
from chains.errors import PromptSpecError, UnknownChainError, UsageError


def test_every_listed_chain_builds_and_runs_on_the_offline_model() -> None:
    names = [c.name for c in list_chains()]
    assert {"story", "summarize", "translate", "keywords", "story_outline"} <= set(names)
    for info in list_chains():
        chain = get_chain(info.name, FakeChatModel())
        assert isinstance(chain, Runnable)
        value = chain.invoke({name: "a quiet harbour at dawn" for name in info.required})
        assert value


def test_story_is_outline_then_story_and_takes_only_a_topic() -> None:
    info = chain_info("story")
    assert info.required == ("topic",) and info.kind == "hand-written"
    assert info.sources == ("prompts/story_outline.yaml", "prompts/story.yaml")
    prompts: list[str] = []
    answers: list[str] = []

    class Spy(FakeChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
            prompts.append(messages[-1].text)
            result = super()._generate(messages, stop, run_manager, **kwargs)
            answers.append(result.generations[0].message.text)
            return result

    story = build_story_chain(Spy()).invoke({"topic": "a brave snail"})
    assert len(prompts) == 2
    assert "outline" in prompts[0].lower() and "a brave snail" in prompts[0]
    assert answers[0] in prompts[1]  # the story is written from the outline
    assert story == answers[1] and "snail" in story.lower()


async def test_a_user_composes_a_chain_with_their_own_model_and_steps() -> None:
    model = ProbeModel()
    story = build_story_chain(model)
    pipeline = RunnableParallel(
        story=story,
        shout=RunnableLambda(lambda x: x["topic"].upper()),
    ) | RunnableLambda(lambda out: f"{out['shout']}: {out['story'][:20]}")
    results = await pipeline.with_config(tags=["mine"]).abatch([{"topic": "a kite"}, {"topic": "a moth"}])
    assert results[0].startswith("A KITE: ") and results[1].startswith("A MOTH: ")
    assert model.calls == 4


async def test_astream_events_see_the_models_tokens_through_a_managed_model() -> None:
    model = ManagedChatModel(inner=FakeChatModel(), streaming=True)
    chain = build_translate_chain(model)
    tokens = []
    async for event in chain.astream_events({"text": "good morning", "language": "French"}, version="v2"):
        if event["event"] == "on_chat_model_stream":
            tokens.append(event["data"]["chunk"].text)
    final = await chain.ainvoke({"text": "good morning", "language": "French"})
    assert len(tokens) > 5 and "".join(tokens) == final


def test_get_chain_with_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownChainError) as info:
        get_chain("nope", FakeChatModel())
    assert "known chains: keywords, story, story_outline, summarize, translate" in str(info.value)


def write_prompt(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(body)
    return path


CHAT = """\
name: chat
description: Answer with the conversation so far.
input_variables: [history, question]
messages:
  - role: system
    content: You are brief.
  - role: placeholder
    variable: history
  - role: human
    content: "{question}"
"""


def test_a_users_prompt_directory_adds_chains_with_history(tmp_path: Path) -> None:
    library = PromptLibrary([write_prompt(tmp_path / "mine", "chat", CHAT).parent])
    info = chain_info("chat", library)
    assert info.required == ("question",) and info.optional == ("history",)
    assert info.sources == ("mine/chat.yaml",)
    seen: list[list[str]] = []

    class Spy(FakeChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
            seen.append([f"{m.type}:{m.text}" for m in messages])
            return super()._generate(messages, stop, run_manager, **kwargs)

    chain = get_chain("chat", Spy(), library=library)
    history = [HumanMessage("hi"), AIMessage("hello!")]
    assert chain.invoke({"question": "what did I say?", "history": history})
    assert seen[-1] == ["system:You are brief.", "human:hi", "ai:hello!", "human:what did I say?"]
    assert chain.invoke({"question": "and without history?"})  # the placeholder is optional
    assert seen[-1] == ["system:You are brief.", "human:and without history?"]


def test_a_name_clash_between_directories_names_both_files(tmp_path: Path) -> None:
    write_prompt(tmp_path / "a", "story", CHAT.replace("name: chat", "name: story"))
    with pytest.raises(UsageError) as info:
        PromptLibrary([tmp_path / "a"]).names()
    assert "prompt 'story' is defined twice: prompts/story.yaml and a/story.yaml" in str(info.value)


def test_a_broken_prompt_file_fails_when_its_chain_is_used(tmp_path: Path) -> None:
    write_prompt(
        tmp_path / "p", "broken", CHAT.replace("name: chat", "name: broken").replace("{question}", "{questoin}")
    )
    library = PromptLibrary([tmp_path / "p"])
    with pytest.raises(PromptSpecError) as info:
        get_chain("broken", FakeChatModel(), library=library)
    assert str(info.value).startswith("p/broken.yaml: messages[2]: uses {questoin}")


def test_json_output_chain_returns_validated_objects() -> None:
    value = get_chain("keywords", FakeChatModel()).invoke({"text": "What a wonderful sunny day at the sea"})
    assert set(value) == {"keywords", "sentiment"} and 1 <= len(value["keywords"]) <= 10
