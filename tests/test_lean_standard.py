"""LangChain's standard tests (``langchain-tests``) for ``LeanChatOpenAI``, as ``test_standard.py`` runs them for ours.

``ChatModelUnitTests`` for ``LeanChatOpenAI`` itself and for ``ManagedChatModel`` over it (a fake key and a base
URL, never contacted); ``ChatModelIntegrationTests`` for ``LeanChatOpenAI`` alone and for ``ManagedChatModel``
over it exactly as ``ModelSession`` builds it for ``RunSettings(http_backend="lean")``, against the fault server
(tests/fault_server.py) and, marked slow, the real llama.cpp server.  Nothing here reaches beyond 127.0.0.1.

Unsupported, declared with the standard properties (see test_standard.py for the common ones): tool calling,
tool choice and structured output against the fault server and llama.cpp, which cannot call tools (the lean
model's tools and structured output are checked answer for answer against ``ChatOpenAI`` in test_lean_model.py);
``test_init_from_env``: the lean model reads no environment (``chains.settings`` is the one place that does);
``test_serdes``: it is not in LangChain's serialization namespace; model override on llama.cpp (one model).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests
from test_standard import _OnFaultServer, _OnLlamaCpp, _SessionOverHTTP

from chains.providers.lean import LeanChatOpenAI
from chains.providers.managed import ManagedChatModel

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

_NOWHERE = "http://127.0.0.1:9/v1"


@pytest.fixture
def benchmark(codspeed_benchmark: Any) -> Any:
    """``test_init_time`` asks for pytest-benchmark's fixture (disabled here): pytest-codspeed's drop-in."""
    return codspeed_benchmark


class TestLeanUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return LeanChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "gpt-4o-mini", "api_key": "sk-test", "base_url": _NOWHERE}


class TestManagedLeanUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ManagedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"inner": LeanChatOpenAI(model="gpt-4o-mini", api_key="sk-test", base_url=_NOWHERE)}


class _LeanOverHTTP(_SessionOverHTTP):
    """``LeanChatOpenAI`` alone: its sync calls on its own portal loop, its async ones on the test's."""

    served_model = "fake-model"

    @pytest.fixture
    async def model(self, request: pytest.FixtureRequest) -> AsyncIterator[BaseChatModel]:
        params = {**self.chat_model_params, **(getattr(request, "param", None) or {})}
        model = LeanChatOpenAI(**params)
        yield model
        await model.transport.aclose(only_here=True)
        model.close_portal()

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return LeanChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": self.served_model, "api_key": "sk-test", "base_url": self.base_url, "stream_usage": True}


class _ManagedLeanOverHTTP(_SessionOverHTTP):
    """``ManagedChatModel`` over the lean model exactly as ``ModelSession`` builds it (test_standard.py's suite)."""

    served_model = "fake-model"
    http_backend = "lean"


class TestLeanFaultServer(_OnFaultServer, _LeanOverHTTP):
    pass


class TestManagedLeanFaultServer(_OnFaultServer, _ManagedLeanOverHTTP):
    pass


@pytest.mark.slow
class TestManagedLeanLlamaCpp(_OnLlamaCpp, _ManagedLeanOverHTTP):
    pass
