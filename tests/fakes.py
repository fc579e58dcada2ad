"""Test doubles that are real subclasses: chat models that count, wait and fail on cue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field

from chains.providers.fake import FakeChatModel


class StatusError(Exception):
    """Looks like an SDK's HTTP error: has ``status_code`` and ``response.headers``."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"server said {status}")
        self.status_code = status

        class _Response:
            pass

        self.response = _Response()
        self.response.headers = headers or {}  # type: ignore[attr-defined]


class ProbeModel(FakeChatModel):
    """The offline model, plus: a delay per request, in-flight counting, and failures on cue.

    A prompt containing ``fail_marker`` raises ``ValueError`` (a bug-like error, never retried);
    ``transient`` maps a marker to how many times it should first fail with HTTP 503.
    """

    delay: float = 0.0
    fail_marker: str = "FAIL"
    transient: dict[str, int] = Field(default_factory=dict)
    calls: int = 0
    in_flight: int = 0
    peak: int = 0

    def _text(self, messages: list[BaseMessage]) -> str:
        return "\n".join(m.text for m in messages)

    async def _enter(self, messages: list[BaseMessage]) -> None:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            text = self._text(messages)
            if self.fail_marker and self.fail_marker in text:
                raise ValueError(f"the model cannot handle {self.fail_marker!r}")
            for marker, remaining in self.transient.items():
                if marker in text and remaining > 0:
                    self.transient[marker] = remaining - 1
                    raise StatusError(503)
        except BaseException:
            self.in_flight -= 1
            raise

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        await self._enter(messages)
        try:
            return await super()._agenerate(messages, stop, run_manager, **kwargs)
        finally:
            self.in_flight -= 1

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        await self._enter(messages)
        try:
            async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
                yield chunk
        finally:
            self.in_flight -= 1
