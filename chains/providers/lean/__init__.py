"""A lean transport for OpenAI-compatible chat completions: ``LeanChatOpenAI``, a real ``BaseChatModel``.

One pooled aiohttp session per event loop (``transport``), ``orjson``, a small bounded SSE reader (``sse``), the
wire format to LangChain messages and back as ``ChatOpenAI`` does it (``convert``, ``schema``), and the model
(``model``).  Nothing on this path imports ``openai`` or ``langchain_openai``: ``RunSettings(http_backend="lean")``.
"""

from __future__ import annotations

from chains.providers.lean.model import LeanChatOpenAI

__all__ = ["LeanChatOpenAI"]
