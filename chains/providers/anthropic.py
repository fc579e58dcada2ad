"""Anthropic's models: ``--model anthropic:NAME`` to a ``ChatAnthropic`` built the way the runner needs it.

``ChatAnthropic`` with the run's key, ``--base-url`` (else Anthropic's own, never an endpoint taken from the
environment behind the run's back), ``max_retries=0`` (the runner is the one retry layer), the attempt's timeout
and streaming usage on, plus three things the integration does not do by itself:

- its own HTTP pool, sized to ``--max-concurrency`` and opened on first use (langchain-anthropic shares one cached
  httpx client between every instance and event loop; ``LoopPools`` gives each loop its own model, so each gets
  its own pool here).  The SDK's aiohttp transport (``--http-backend aiohttp``) only once someone has taken the
  pool's closer (``http_pool``) to close it: an aiohttp session nobody closes warns at exit; an httpx one does not;
- the response headers (``retry-after``, ``anthropic-ratelimit-*``) in ``generation_info["headers"]``, where
  ``chains.providers.accounting.response_headers`` finds them, streamed or not;
- a streamed answer's ``stop_reason`` also as ``finish_reason`` in its last chunk's ``generation_info``, which is
  how the runner tells a complete stream from one cut short (``chains.providers.streaming.finish_reason``).
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.outputs import ChatGenerationChunk

from chains.errors import ModelConfigError
from chains.providers.model_spec import ModelSpec
from chains.settings import RunSettings

ANTHROPIC_URL = "https://api.anthropic.com"
EXTRA = "pip install 'chain-runner[anthropic]'"

_headers: contextvars.ContextVar[Any] = contextvars.ContextVar("chain_runner_anthropic_headers", default=None)
"""The headers of the response the running task's request got (set by ``_acreate``, read once after it)."""


def create_anthropic(spec: ModelSpec, settings: RunSettings, base_url: str | None) -> BaseChatModel:
    """The ``ChatAnthropic`` for ``spec`` at ``base_url`` (Anthropic's own when None)."""
    cls = runner_chat_anthropic()  # the integration first: without it no key helps
    secret = settings.key_for("anthropic")
    if secret is None and not base_url:
        raise ModelConfigError(
            f"--model {spec} needs ANTHROPIC_API_KEY; export it, pass --base-url for an Anthropic-compatible "
            "server, or use --model fake"
        )
    key = secret.get_secret_value() if secret is not None else "not-needed"
    model = cls(
        model=spec.name,
        api_key=key,
        base_url=api_root(base_url),
        max_retries=0,  # the runner is the one retry layer
        timeout=settings.timeout,
        stream_usage=True,
    )
    model._connections = max(10, settings.max_concurrency * 2)
    model._aiohttp = settings.http_backend != "httpx"
    chat: BaseChatModel = model
    return chat


def api_root(base_url: str | None) -> str:
    """The SDK's base URL: Anthropic's paths start with ``/v1``, so an OpenAI-style ``…/v1`` loses it."""
    if not base_url:
        return ANTHROPIC_URL
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


@functools.cache
def runner_chat_anthropic() -> type[Any]:
    """``ChatAnthropic`` with the runner's HTTP pool, response headers and finish reason (see the module)."""
    try:
        import anthropic
        from langchain_anthropic import ChatAnthropic
    except ImportError as exc:
        raise ModelConfigError(f"--model anthropic:NAME needs langchain-anthropic: {EXTRA}") from exc
    from pydantic import PrivateAttr

    class RunnerChatAnthropic(ChatAnthropic):
        _connections: int = PrivateAttr(default=20)
        _aiohttp: bool = PrivateAttr(default=False)
        _owned: bool = PrivateAttr(default=False)
        _http: Any = PrivateAttr(default=None)

        @functools.cached_property
        def _async_client(self) -> anthropic.AsyncAnthropic:
            transports = ("DefaultAioHttpClient",) if self._aiohttp and self._owned else ()
            self._http = _http_client(anthropic, (*transports, "DefaultAsyncHttpxClient"), self._connections,
                                      self.default_request_timeout)  # fmt: skip
            return anthropic.AsyncAnthropic(**self._client_params, http_client=self._http)

        @property
        def http_pool(self) -> _Pool:
            """This model's pool as something to close (``aclose``) at the end: whoever takes it closes it."""
            self._owned = True
            return _Pool(self)

        async def aclose_http(self) -> None:
            """Close this model's pool, if it was ever opened."""
            if self._http is not None:
                http, self._http = self._http, None
                await http.aclose()

        async def _acreate(self, payload: dict[str, Any]) -> Any:
            raw = await super()._acreate(payload)
            _headers.set(getattr(raw, "headers", None))
            return raw

        def _format_output(self, data: Any, *, generation_info: dict[str, Any] | None = None, **kw: Any) -> Any:
            headers = _take_headers()
            if headers is not None:
                generation_info = {**(generation_info or {}), "headers": headers}
            return super()._format_output(data, generation_info=generation_info, **kw)

        async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
            first = True
            async for chunk in super()._astream(*args, **kwargs):
                info = dict(chunk.generation_info or {})
                if first and (headers := _take_headers()) is not None:
                    info["headers"] = headers
                first = False
                stop_reason = chunk.message.response_metadata.get("stop_reason")
                if stop_reason:
                    info["finish_reason"] = stop_reason
                if info:
                    chunk.generation_info = info
                yield chunk

    return RunnerChatAnthropic


def _take_headers() -> dict[str, str] | None:
    headers = _headers.get()
    if headers is None:
        return None
    _headers.set(None)
    try:
        return {str(k).lower(): str(v) for k, v in headers.items()}
    except Exception:  # headers of an unknown kind: none
        return None


class _Pool:
    """A model's HTTP pool as ``ModelSession`` uses one: probed (``get``, opening it) and closed (``aclose``)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    async def get(self, url: str, **kwargs: Any) -> Any:
        self.model._async_client  # noqa: B018  # opens the pool
        return await self.model._http.get(url, **kwargs)

    async def aclose(self) -> None:
        await self.model.aclose_http()


def _http_client(anthropic: Any, transports: tuple[str, ...], connections: int, timeout: float | None) -> Any:
    """The model's connection pool: the first of the SDK's ``transports`` that is installed."""
    from chains.providers.factories import _http_module

    seconds = timeout or 600.0
    for name in transports:
        factory = getattr(anthropic, name)
        http = _http_module(factory)
        try:
            return factory(
                limits=http.Limits(max_connections=connections, max_keepalive_connections=connections),
                timeout=http.Timeout(seconds, connect=min(10.0, seconds)),
            )
        except RuntimeError:  # the SDK was installed without its aiohttp extra
            continue
    raise ModelConfigError("the anthropic SDK has no async HTTP client; reinstall it: " + EXTRA)
