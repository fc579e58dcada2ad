"""``--dry-run``'s library half (issue 13): every input up to its first model call, counted, nothing sent.

The numbers are checked against a hand count: the prompt files' messages read with PyYAML and
filled in with ``str.format``, at four characters a token (the model names here are unknown to
tiktoken, so the runner counts that way too, and no tokenizer is fetched).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import ProbeModel
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel

from chains import PromptLibrary, get_chain
from chains.engine.pricing import TIERS, ModelPrice, PriceTable
from chains.errors import InputError
from chains.providers.dry_run import (
    DEFAULT_OUTPUT_TOKENS,
    CaptureModel,
    DryRunReport,
    _Captured,
    capturing,
    estimate,
)

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
LIBRARY = PromptLibrary([])
MODEL = "my-model"
PRICES = PriceTable({MODEL: ModelPrice(2.0, 8.0, cached_input=0.5)})
TOPICS = ["a brave snail", "a dragon who collects teacups", "the moon's lost sock"]
TEXTS = ["The harbour was quiet at dawn; gulls circled the boats.", "Prices rose again in March, said the bank."]


def _hand_count(prompt: str, **values: Any) -> tuple[int, int]:
    """A prompt file's first request by hand: (tokens at 4 characters each, rounded up per message; max_tokens)."""
    spec = yaml.safe_load((PROMPTS / f"{prompt}.yaml").read_text(encoding="utf-8"))
    values = {**spec.get("defaults", {}), **values}
    tokens = sum(math.ceil(len(message["content"].format(**values)) / 4) for message in spec["messages"])
    return tokens, spec["model"]["max_tokens"]


def _story(model: CaptureModel) -> Runnable[Any, Any]:
    return get_chain("story", model, library=LIBRARY)


def _keywords(model: CaptureModel) -> Runnable[Any, Any]:
    return get_chain("keywords", model, library=LIBRARY)


async def test_the_story_chain_is_counted_at_its_first_step_the_outline() -> None:
    report = await estimate(_story, [{"topic": t} for t in TOPICS], model_name=MODEL, prices=PRICES)
    counts = [_hand_count("story_outline", topic=t) for t in TOPICS]
    input_tokens = sum(tokens for tokens, _ in counts)
    output_tokens = sum(max_tokens for _, max_tokens in counts)
    assert output_tokens == 3 * 150  # story_outline.yaml's max_tokens, not story.yaml's 600
    assert (report.inputs, report.requests, report.failed, report.no_request) == (3, 3, 0, 0)
    assert (report.input_tokens, report.output_tokens) == (input_tokens, output_tokens)
    assert report.input_tokens_exact is False
    online = (input_tokens * 2.0 + output_tokens * 8.0) / 1_000_000
    assert report.cost_usd == pytest.approx({"online": online, "flex": online / 2, "batch": online / 2})


async def test_a_json_chain_is_counted_with_its_schema_request() -> None:
    report = await estimate(_keywords, ({"text": t} for t in TEXTS), model_name=MODEL, prices=PRICES)
    counts = [_hand_count("keywords", text=t) for t in TEXTS]
    assert (report.inputs, report.requests) == (2, 2)
    assert report.input_tokens == sum(tokens for tokens, _ in counts)
    assert report.output_tokens == 2 * 200


async def test_the_capture_model_records_the_request_as_the_chain_would_send_it() -> None:
    model = CaptureModel(model_name=MODEL)
    chain = _keywords(model)
    with capturing() as capture:
        with pytest.raises(_Captured):
            await chain.ainvoke({"text": TEXTS[0]})
    request = capture.first
    assert request is not None
    assert [m.type for m in request.messages] == ["system", "human"] and TEXTS[0] in request.messages[1].text
    assert request.params["max_tokens"] == 200 and request.params["temperature"] == 0
    assert request.params["response_format"]["type"] == "json_schema"
    assert request.params["response_format"]["json_schema"]["schema"]["required"] == ["keywords", "sentiment"]
    with capturing() as capture:  # the sync path stops at the same place
        with pytest.raises(_Captured):
            chain.invoke({"text": TEXTS[1]})
    assert capture.first is not None and TEXTS[1] in capture.first.messages[1].text


async def test_inputs_that_fail_before_any_request_are_counted_with_the_first_error() -> None:
    bad_row = InputError("--input in.jsonl line 2: not valid JSON (Expecting value); fix the line")
    inputs = [{"topic": TOPICS[0]}, bad_row, {"subject": "no topic"}, {"topic": TOPICS[1]}]
    report = await estimate(_story, inputs, model_name=MODEL, prices=PRICES)
    assert (report.inputs, report.requests, report.failed, report.no_request) == (4, 2, 2, 0)
    assert report.first_error == "input 1: --input in.jsonl line 2: not valid JSON (Expecting value); fix the line"
    assert report.input_tokens == sum(_hand_count("story_outline", topic=t)[0] for t in TOPICS[:2])
    lines = report.lines()
    assert any(
        line.startswith("  2 inputs would fail before any request; the first: input 1: --input") for line in lines
    )


async def test_a_template_error_is_one_line_naming_the_input() -> None:
    report = await estimate(_story, [{"subject": "x"}], model_name=MODEL, prices=PRICES)
    assert report.failed == 1 and report.first_error is not None
    assert report.first_error.startswith("input 0: KeyError: ") and "topic" in report.first_error
    assert "\n" not in report.first_error and len(report.first_error) < 300


def _plain(model: CaptureModel) -> Runnable[Any, Any]:
    return ChatPromptTemplate.from_messages([("human", "Tell me about {topic}")]) | model | StrOutputParser()


async def test_output_tokens_are_max_tokens_or_the_default_and_overrides_win() -> None:
    inputs = [{"topic": "owls"}]
    tokens = math.ceil(len("Tell me about owls") / 4)
    report = await estimate(_plain, inputs, model_name=MODEL, prices=PRICES)
    assert (report.input_tokens, report.output_tokens) == (tokens, DEFAULT_OUTPUT_TOKENS)
    report = await estimate(_plain, inputs, model_name=MODEL, prices=PRICES, output_tokens_default=40)
    assert report.output_tokens == 40
    report = await estimate(_story, inputs, model_name=MODEL, prices=PRICES, overrides={"max_tokens": 10})
    assert report.output_tokens == 10  # --max-tokens wins over story_outline.yaml's 150


async def test_a_given_counter_counts_the_prompt() -> None:
    report = await estimate(
        _plain, [{"topic": "owls"}], model_name=MODEL, prices=PRICES, count=lambda t: len(t.split())
    )
    assert report.input_tokens == 4 and report.input_tokens_exact is True  # "Tell me about owls"


async def test_a_model_without_a_price_has_an_unknown_cost_at_every_tier() -> None:
    report = await estimate(_plain, [{"topic": "owls"}], model_name="unpriced", prices=PRICES)
    assert report.cost_usd == {tier: None for tier in TIERS}
    tier_lines = [line for line in report.lines() if line.startswith("cost at the ")]
    assert tier_lines == [
        f"cost at the {tier} tier: unknown (no price for unpriced; add it with --prices FILE)" for tier in TIERS
    ]


async def test_the_report_as_json_and_as_lines() -> None:
    report = await estimate(_story, [{"topic": t} for t in TOPICS], model_name=MODEL, prices=PRICES)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["inputs"] == 3 and data["requests"] == 3 and data["first_step_only"] is True
    assert data["output_tokens_estimated"] is True and set(data["cost_usd"]) == set(TIERS)
    lines = report.lines()
    assert lines[0] == f"dry run on {MODEL}, nothing sent: 3 inputs, 3 first-step requests"
    assert [line.split(":")[0] for line in lines if line.startswith("cost")] == [
        f"cost at the {tier} tier" for tier in TIERS
    ]  # one line per tier
    assert any("output tokens: up to 450 (an estimate" in line for line in lines)
    assert "only the first model call of each input is counted" in lines[-1]
    assert all("\n" not in line for line in lines)


@pytest.mark.parametrize(
    ("cost", "shown"), [(0.0, "$0"), (0.000123, "$0.000123"), (0.5, "$0.5"), (1234.5678, "$1,234.57")]
)
def test_costs_are_shown_to_the_millionth_below_a_dollar(cost: float, shown: str) -> None:
    report = DryRunReport(MODEL, cost_usd={"online": cost, "flex": None, "batch": None})
    assert f"cost at the online tier: about {shown}" in report.lines()


async def test_retries_and_fallbacks_in_the_chain_are_never_run() -> None:
    """The stop signal is not an ``Exception``: ``with_retry`` does not retry it, ``with_fallbacks`` does not
    fall back to the next model (which would send a request)."""
    fallback = ProbeModel()

    def build(model: CaptureModel) -> Runnable[Any, Any]:
        guarded = model.with_retry(stop_after_attempt=5).with_fallbacks([fallback])
        return ChatPromptTemplate.from_messages([("human", "{topic}")]) | guarded | StrOutputParser()

    started = time.perf_counter()
    report = await estimate(build, [{"topic": t} for t in TOPICS], model_name=MODEL, prices=PRICES)
    assert (report.requests, report.failed) == (3, 0)
    assert fallback.calls == 0
    assert time.perf_counter() - started < 2  # no retry backoff waited


async def test_a_first_step_that_fans_out_counts_one_request_per_input() -> None:
    def build(model: CaptureModel) -> Runnable[Any, Any]:
        one = ChatPromptTemplate.from_messages([("human", "one {topic}")]) | model
        two = ChatPromptTemplate.from_messages([("human", "two {topic}")]) | model
        return RunnableParallel(one=one, two=two)

    report = await estimate(build, [{"topic": t} for t in TOPICS], model_name=MODEL, prices=PRICES)
    assert (report.inputs, report.requests) == (3, 3)
    # whichever branch called first stands for the step ("one" and "two" are the same length)
    assert report.input_tokens == sum(math.ceil(len(f"one {t}") / 4) for t in TOPICS)


async def test_a_chain_that_calls_no_model_makes_no_request() -> None:
    report = await estimate(
        lambda model: RunnableLambda(lambda x: x), [{"a": 1}, {"a": 2}], model_name=MODEL, prices=PRICES
    )
    assert (report.inputs, report.requests, report.no_request, report.input_tokens) == (2, 0, 2, 0)
    assert report.cost_usd["online"] == 0.0


async def test_inputs_may_be_an_async_iterable_read_lazily() -> None:
    pulled: list[int] = []

    async def topics() -> AsyncIterator[dict[str, str]]:
        for index, topic in enumerate(TOPICS):
            pulled.append(index)
            await asyncio.sleep(0)
            yield {"topic": topic}

    report = await estimate(_story, topics(), model_name=MODEL, prices=PRICES)
    assert report.requests == 3 and pulled == [0, 1, 2]


async def test_memory_stays_flat_however_many_inputs() -> None:
    """Only sums are kept: 4x the inputs, about the same peak (400 prompts of 2 KB held would be 800 KB)."""

    def rows(n: int) -> Iterator[dict[str, str]]:
        return ({"topic": f"topic number {i} " + "x" * 2000} for i in range(n))

    await estimate(_plain, rows(10), model_name=MODEL, prices=PRICES)  # first-use caches are not the inputs
    peaks = []
    for n in (100, 400):
        tracemalloc.start()
        report = await estimate(_plain, rows(n), model_name=MODEL, prices=PRICES)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert report.requests == n
    assert peaks[1] < peaks[0] + 100_000 and peaks[1] < 400_000, peaks


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=5))
def test_any_topics_are_counted_exactly_by_hand(topics: list[str]) -> None:
    report = asyncio.run(estimate(_story, [{"topic": t} for t in topics], model_name=MODEL, prices=PRICES))
    assert (report.inputs, report.requests, report.failed) == (len(topics), len(topics), 0)
    assert report.input_tokens == sum(_hand_count("story_outline", topic=t)[0] for t in topics)
    assert report.output_tokens == 150 * len(topics)
