"""LangChain's own standard tests (``langchain-tests``) for our chat models.

``ChatModelUnitTests`` run for ``FakeChatModel``, ``ManagedChatModel(inner=FakeChatModel())`` and
``ManagedChatModel`` over ``ChatOpenAI`` (a fake key and a base URL, never contacted);
``ChatModelIntegrationTests`` for the two offline models, for ``ManagedChatModel`` over
``ChatOpenAI`` as ``ModelSession`` builds it against the fault server (tests/fault_server.py), and,
marked slow, against the real llama.cpp server with the tiny stories260K model.  Nothing here
reaches beyond 127.0.0.1: pytest-socket refuses any other address.

What a model does not support is declared with the standard properties, as LangChain itself
does; the suite then reports those tests as skipped with the reason below.  No test is marked
xfail: every test that a property does not switch off passes.

Unsupported, by model (the standard property, and why):

- all: image, PDF and audio inputs, image and PDF tool messages, Anthropic-style inputs
  (``supports_*_inputs`` / ``supports_*_tool_message`` / ``supports_anthropic_inputs`` are False by
  default): text models only, and these tests download their media from the internet;
  ``test_stream_time`` (``enable_vcr_tests`` False): it records HTTP cassettes, and we test against
  live local servers instead; ``test_json_mode`` (``supports_json_mode`` False): no model here
  implements ``response_format={"type": "json_object"}`` (the fake answers ``json_schema`` and tools).
- unit tests, all three: ``test_init_from_env`` (``init_from_env_params`` empty): the fake reads no
  environment, and a managed model takes a ready ``inner`` model rather than keys from the
  environment; ``test_serdes`` (``is_lc_serializable()`` False): neither class is in LangChain's
  serialization namespace (and a managed model holds live limits and HTTP pools).
- fault server: tool calling, tool choice and structured output (``has_tool_calling``,
  ``has_tool_choice``, ``has_structured_output`` False): it only echoes the last user message.
- llama.cpp (stories260K): the same, since the tiny model cannot call tools and llama.cpp refuses
  ``response_format`` of type ``json_schema`` (HTTP 500); model override
  (``supports_model_override`` False): the server serves one model whatever the request names.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fault_server import FaultServer
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from llama_server import MODEL_ALIAS
from pytest_socket import SocketConnectBlockedError

from chains import ModelSession, RunSettings
from chains.engine.limits import Limits
from chains.providers.fake import FakeChatModel, _fill
from chains.providers.managed import ManagedChatModel

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


@pytest.fixture
def benchmark(codspeed_benchmark: Any) -> Any:
    """``test_init_time`` asks for pytest-benchmark's fixture; pyproject.toml disables that plugin
    (``-p no:benchmark``), and pytest-codspeed's drop-in (installed with langchain-tests) runs the
    function once when no benchmark run is asked for."""
    return codspeed_benchmark


class _ClosesPortal:
    """The standard ``model`` fixture, plus: a managed model's portal loop (sync calls) is stopped after
    the test, so that a run of the suite does not leave a thread per test behind."""

    @pytest.fixture
    def model(self, request: pytest.FixtureRequest) -> Iterator[BaseChatModel]:
        suite: Any = self
        params = {
            **suite.standard_chat_model_params,
            **suite.chat_model_params,
            **(getattr(request, "param", None) or {}),
        }
        model = suite.chat_model_class(**params)
        yield model
        if isinstance(model, ManagedChatModel):
            model.close_portal()


# ----------------------------------------------------------------------------- unit tests


class TestFakeUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return FakeChatModel


class TestManagedFakeUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ManagedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"inner": FakeChatModel()}


class TestManagedOpenAIUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ManagedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        inner = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", base_url="http://127.0.0.1:9/v1", max_retries=0)
        return {"inner": inner}


# ----------------------------------------------------------------------------- offline integration tests


class TestFakeIntegration(_ClosesPortal, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return FakeChatModel

    @property
    def model_override_value(self) -> str:
        return "fake-other"


class TestManagedFakeIntegration(_ClosesPortal, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ManagedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"inner": FakeChatModel(), "limits": Limits.create(4)}

    @property
    def model_override_value(self) -> str:
        return "fake-other"


# ----------------------------------------------------------------------------- over HTTP


class _SessionOverHTTP(ChatModelIntegrationTests):
    """``ManagedChatModel`` over ``ChatOpenAI`` exactly as ``ModelSession`` builds it for ``--model
    openai:NAME --base-url URL`` (one HTTP pool per event loop), against the server at ``base_url``."""

    base_url: str = ""
    served_model: str = ""
    http_backend: str = "httpx"
    """Which inner model ``ModelSession`` builds (test_lean_standard.py runs the same suite with ``lean``)."""
    _session: ModelSession

    @pytest.fixture
    async def model(self, request: pytest.FixtureRequest) -> AsyncIterator[BaseChatModel]:
        """Closed on the test's own event loop at the end, so that no connection outlives its loop."""
        settings = RunSettings(
            model=f"openai:{self.served_model}",
            base_url=self.base_url,
            max_retries=0,
            http_backend=self.http_backend,  # type: ignore[arg-type]
        )
        self._session = ModelSession(settings)
        model = ManagedChatModel(**{**self.chat_model_params, **(getattr(request, "param", None) or {})})
        yield model
        await self._session.aclose()
        model.close_portal()

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ManagedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        model = self._session.model
        return {
            "inner": model.inner,
            "inner_for_loop": model.inner_for_loop,
            "max_retries": 0,
            "base_url": model.base_url,
            "token_model": model.token_model,
            "limits": Limits.create(4),
        }

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False


class _OnFaultServer:
    """Against the fault server (one per class), which answers as the model the request names."""

    served_model = "fake-model"
    base_url: str

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _server(cls) -> Iterator[None]:
        with FaultServer().start() as server:
            cls.base_url = server.base_url
            yield

    @property
    def model_override_value(self) -> str:
        return "other-model"


class _OnLlamaCpp:
    """Against the real llama.cpp server (tests/llama_server.py), which serves one model: no model override."""

    served_model = MODEL_ALIAS
    base_url: str

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _server(cls, llama_server: str) -> None:
        cls.base_url = llama_server

    @property
    def supports_model_override(self) -> bool:
        return False


class TestManagedOpenAIFaultServer(_OnFaultServer, _SessionOverHTTP):
    pass


@pytest.mark.slow
class TestManagedOpenAILlamaCpp(_OnLlamaCpp, _SessionOverHTTP):
    pass


# ----------------------------------------------------------------------------- what the suite relies on


def test_nothing_here_can_reach_beyond_127_0_0_1() -> None:
    with pytest.warns(UserWarning, match="192.0.2.1"), pytest.raises(SocketConnectBlockedError):
        socket.create_connection(("192.0.2.1", 9), timeout=0.5)  # TEST-NET-1: never routed


def test_the_managed_model_declares_tool_choice_as_langchain_detects_it() -> None:
    assert TestManagedFakeIntegration().has_tool_choice, "bind_tools has no tool_choice parameter"


@pytest.fixture
def managed() -> Iterator[list[ManagedChatModel]]:
    """Managed models a test builds; their portal loops are stopped afterwards."""
    models: list[ManagedChatModel] = []
    yield models
    for model in models:
        model.close_portal()


def test_standard_init_parameters_of_the_managed_model_are_honoured(managed: list[ManagedChatModel]) -> None:
    model = ManagedChatModel(inner=FakeChatModel(), temperature=0.2, max_tokens=3, stop=["never"])
    managed.append(model)
    assert len(model.invoke("Topic: a brave snail").text.split()) <= 3
    params = model._get_ls_params()
    assert (params.get("ls_temperature"), params.get("ls_max_tokens"), params.get("ls_stop")) == (0.2, 3, ["never"])
    assert len(model.invoke("Topic: a brave snail", max_tokens=5).text.split()) == 5, "a call's own value wins"


def test_the_fake_models_default_stop_sequences_cut_the_answer(managed: list[ManagedChatModel]) -> None:
    whole = FakeChatModel().invoke("Topic: a brave snail").text
    word = whole.split()[5]
    cut = FakeChatModel(stop=[word]).invoke("Topic: a brave snail").text
    assert word not in cut and whole.startswith(cut), (word, cut)
    managed.append(ManagedChatModel(inner=FakeChatModel(), stop=[word]))
    assert managed[-1].invoke("Topic: a brave snail").text == cut


def test_the_fake_model_answers_a_tools_result_in_text() -> None:
    """An agent loop over the offline model ends: a tool's result gets an answer, not another call."""

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    model = FakeChatModel().bind_tools([add])
    call = model.invoke("What is 3 + 4?")
    assert call.tool_calls and call.tool_calls[0]["args"] == {"a": 3, "b": 4}
    answer = model.invoke(
        [HumanMessage("What is 3 + 4?"), call, ToolMessage("7", tool_call_id=call.tool_calls[0]["id"])]
    )
    assert not answer.tool_calls and answer.text
    forced = FakeChatModel().bind_tools([add], tool_choice="add")
    assert forced.invoke([HumanMessage("What is 3 + 4?"), call, ToolMessage("7", tool_call_id="x")]).tool_calls


# ----------------------------------------------------------------------------- the fake's JSON values

_KEYWORDS = ("type", "properties", "items", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems", "maxLength")
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_schemas = st.recursive(
    _json_scalars | st.sampled_from(_TYPES) | st.sampled_from(["#", "#/$defs/A", "#/$defs", "#/x/y", "#/$defs/A/"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYWORDS + _BOUNDS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(schema=_schemas, prompt=st.text(max_size=200))
def test_any_schema_gets_a_bounded_json_value_and_never_an_error(schema: Any, prompt: str) -> None:
    """Schemas come from prompt files and tool definitions: malformed, recursive or contradictory
    ones still give a JSON value, quickly, instead of an exception inside the model."""
    started = time.perf_counter()
    value = _fill([HumanMessage(prompt)], schema)
    text = json.dumps(value, ensure_ascii=False)
    assert time.perf_counter() - started < 1.0
    assert len(text) <= 2000 * (len(prompt) + len(json.dumps(schema)) + 64)


def test_a_recursive_schema_ends() -> None:
    node = {
        "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
        "$ref": "#/$defs/Node",
    }
    value = _fill([HumanMessage("a list")], node)
    depth = 0
    while isinstance(value, dict):
        value, depth = value.get("next"), depth + 1
    assert 1 < depth < 100
    assert _fill([HumanMessage("x")], {"$ref": "#"}) is not None
