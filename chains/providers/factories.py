"""Provider models: a ``ModelSpec`` and the run's settings to the integration's chat model and its HTTP pool.

Each integration is imported only when its model is used, so ``list``/``show`` and the offline model start fast.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from langchain_core.language_models import BaseChatModel

from chains.errors import ModelConfigError
from chains.providers.model_spec import ModelSpec
from chains.settings import FAKE_MODEL, RunSettings


def build_inner(spec: ModelSpec, settings: RunSettings, base_url: str | None) -> tuple[BaseChatModel, Any]:
    """A provider model for the endpoint ``base_url`` and the HTTP client it owns (None when there is none to close)."""
    if spec.provider == FAKE_MODEL:
        from chains.providers.fake import FakeChatModel

        return FakeChatModel(token_delay=settings.fake_token_delay), None
    if spec.provider == "openai":
        if uses_lean(settings):  # its own pool per event loop: no SDK client to build
            lean = create_openai(spec, settings, None, base_url)
            return lean, lean.transport  # type: ignore[attr-defined]
        http = create_http_client(settings)
        return create_openai(spec, settings, http, base_url), http
    if spec.provider == "anthropic":
        from chains.providers.anthropic import create_anthropic

        model = create_anthropic(spec, settings, base_url)
        return model, model.http_pool  # type: ignore[attr-defined]
    return create_other(spec, settings, base_url), None


def uses_lean(settings: RunSettings) -> bool:
    """The lean transport sends online requests; the batch tier speaks the SDK's files and batches API."""
    return settings.http_backend == "lean" and settings.tier != "batch"


def require_key(spec: ModelSpec, settings: RunSettings) -> None:
    """OpenAI itself needs a key; a server at ``--base-url`` may not."""
    if settings.key_for(spec.provider) is None and not settings.base_url:
        raise ModelConfigError(
            f"--model {spec} needs OPENAI_API_KEY; export it, pass --base-url for a local "
            "OpenAI-compatible server, or use --model fake"
        )


def create_openai(spec: ModelSpec, settings: RunSettings, http_client: Any, base_url: str | None) -> BaseChatModel:
    require_key(spec, settings)
    secret = settings.key_for(spec.provider)
    key = secret.get_secret_value() if secret is not None else "not-needed"
    if uses_lean(settings):  # chains/providers/lean: no openai / langchain_openai import at all
        from pydantic import SecretStr

        from chains.providers.lean import LeanChatOpenAI

        return LeanChatOpenAI(
            model=spec.name,
            api_key=SecretStr(key),
            base_url=base_url,
            timeout=settings.timeout,
            stream_usage=True,
            include_response_headers=True,
            max_connections=max(10, settings.max_concurrency * 2),
            service_tier="flex" if settings.tier == "flex" else None,
        )
    from langchain_openai import ChatOpenAI

    # langchain-openai warns on every streamed request with a response_format (a JSON prompt file) that it cannot
    # return the response headers then: the rate limiter goes without them for those requests, nothing else.
    warnings.filterwarnings("ignore", message="Cannot currently include response headers", category=UserWarning)
    kwargs: dict[str, Any] = {
        "model": spec.name,
        "api_key": key,
        "base_url": base_url,
        "max_retries": 0,  # the runner is the one retry layer
        "timeout": settings.timeout,
        # No per-chunk timeout: the managed model bounds each attempt as a whole (chains/engine/deadline.py), and
        # langchain-openai's per-chunk asyncio.wait_for swallows that deadline's cancellation on Python 3.11.
        "stream_chunk_timeout": None,
        "stream_usage": True,  # also for custom base URLs, where it is off by default
        "http_async_client": http_client,  # our pool: one per run, sized to --max-concurrency
        # The sync client is never used; without this langchain-openai would build one with
        # its own transport (and warn when a proxy variable such as NO_PROXY is set).
        "http_socket_options": (),
        "include_response_headers": True,  # x-ratelimit-* headers feed the rate limiter
    }
    if settings.tier == "flex":
        kwargs["service_tier"] = "flex"
    if base_url and "api.openai.com" not in base_url:
        return compatible_chat_openai()(**kwargs)
    return ChatOpenAI(**kwargs)


@functools.cache
def compatible_chat_openai() -> type[BaseChatModel]:
    """ChatOpenAI for OpenAI-compatible servers.

    langchain-openai sends the length limit as ``max_completion_tokens`` (OpenAI's current
    name); llama.cpp, vLLM, Ollama and LM Studio read ``max_tokens`` and silently ignore the
    other, so answers would run to the end of the context window.
    """
    from langchain_openai import ChatOpenAI

    class CompatibleChatOpenAI(ChatOpenAI):
        def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
            payload = super()._get_request_payload(input_, stop=stop, **kwargs)
            if "max_completion_tokens" in payload:
                payload["max_tokens"] = payload.pop("max_completion_tokens")
            return payload

    return CompatibleChatOpenAI


def create_other(spec: ModelSpec, settings: RunSettings, base_url: str | None = None) -> BaseChatModel:
    if spec.provider == "anthropic":
        from chains.providers.anthropic import create_anthropic

        return create_anthropic(spec, settings, base_url)
    integration = "langchain-" + spec.provider.replace("_", "-")
    try:
        from langchain.chat_models import init_chat_model
    except ImportError as exc:  # the [providers] extra is not installed
        raise ModelConfigError(
            f"--model {spec} needs the providers extra: pip install 'chain-runner[providers]' {integration}"
        ) from exc
    try:
        return init_chat_model(f"{spec.provider}:{spec.name}", max_retries=0, timeout=settings.timeout)
    except ImportError as exc:
        raise ModelConfigError(
            f"--model {spec}: the provider's integration is not installed ({exc}); pip install {integration}"
        ) from exc
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise ModelConfigError(
            f"--model {spec}: {first}; use a provider LangChain knows, e.g. openai:gpt-4o-mini"
        ) from exc


def create_http_client(settings: RunSettings) -> Any:
    """The run's one connection pool, sized to ``--max-concurrency``.

    The OpenAI SDK's aiohttp transport when it is available (about half the client CPU per
    request of the default httpx transport, see benchmarks/), else the SDK's httpx client.
    """
    import openai

    connections = max(10, settings.max_concurrency * 2)
    for name in (
        ("DefaultAioHttpClient", "DefaultAsyncHttpxClient")
        if settings.http_backend != "httpx"
        else ("DefaultAsyncHttpxClient",)
    ):
        factory = getattr(openai, name, None)
        if factory is None:
            continue
        http = _http_module(factory)
        try:
            return factory(
                limits=http.Limits(max_connections=connections, max_keepalive_connections=connections),
                timeout=http.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
            )
        except RuntimeError:  # the SDK was installed without its aiohttp extra
            continue
    import httpx

    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
    )


def _http_module(factory: Any) -> Any:
    """The httpx flavour an SDK client class is built on (openai 3.x: httpx2; earlier: httpx)."""
    import importlib

    for base in type.mro(factory):
        root = base.__module__.split(".")[0]
        if root in ("httpx", "httpx2"):
            return importlib.import_module(root)
    import httpx

    return httpx
