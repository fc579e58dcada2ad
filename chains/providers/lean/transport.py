"""One pooled aiohttp session per event loop, and the HTTP failures as the retry layer reads them.

``Transport.post`` sends one JSON body and reads the JSON answer (bounded); ``Transport.stream`` opens an SSE
answer.  An HTTP error status becomes an ``APIStatusError`` with what ``chains.engine.retry.classify`` reads on
the OpenAI SDK's errors: ``status_code``, ``response.headers`` (``Retry-After``, ``retry-after-ms``) and ``body``
(the error object: ``type``, ``code``, ``message``).  A connection that cannot be made, breaks or is cut is an
``APIConnectionError`` caused by aiohttp's own error (so a refusal is still seen as one); a read that times out
is an ``APITimeoutError``.  Each also is LangChain's ``Model*Error`` for its case, as langchain-openai's are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)

from chains.errors import ProviderError

MAX_BODY_BYTES = 64 * 1024 * 1024
"""The largest JSON answer read: a chat completion is far smaller; past it the answer is refused."""
MAX_ERROR_BYTES = 1024 * 1024
"""The most of an error answer's body that is read (its message is in the first bytes)."""
USER_AGENT = "chain-runner-lean/1"


# ----------------------------------------------------------------------------- failures


class ResponseInfo:
    """What an error keeps of its HTTP response: the status and the headers (case-insensitive)."""

    __slots__ = ("headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers


class APIStatusError(ModelError):
    """The server answered with an HTTP error status (the OpenAI SDK's ``APIStatusError``, by its attributes)."""

    def __init__(self, message: str, *, response: ResponseInfo, body: Any) -> None:
        super().__init__(message)
        self.message = message
        self.response = response
        self.status_code = response.status_code
        self.body = body


class BadRequestError(APIStatusError, ModelInvalidRequestError):
    pass


class ContextLengthError(BadRequestError, ContextOverflowError):
    pass


class AuthenticationError(APIStatusError, ModelAuthenticationError):
    pass


class PermissionDeniedError(APIStatusError, ModelPermissionDeniedError):
    pass


class NotFoundError(APIStatusError, ModelNotFoundError):
    pass


class RateLimitError(APIStatusError, ModelRateLimitError):
    pass


class InternalServerError(APIStatusError, ModelAPIError):
    pass


class APIConnectionError(ModelConnectionError, ConnectionError):
    """The server could not be reached, or the connection broke; ``__cause__`` is aiohttp's error."""


class APITimeoutError(ModelTimeoutError, TimeoutError):
    """No answer (or no next bytes of it) within the client's timeout."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def status_error(status: int, headers: Mapping[str, str], raw: bytes) -> APIStatusError:
    """The error for an HTTP error answer; ``body`` is its error object (or its text) as the SDK gives it."""
    try:
        parsed: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = raw.decode("utf-8", "replace")
    body = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    if cls is BadRequestError and "context_length_exceeded" in str(parsed):
        cls = ContextLengthError
    return cls(f"Error code: {status} - {parsed}", response=ResponseInfo(status, headers), body=body)


def flat_headers(headers: Any) -> dict[str, str]:
    """Response headers as ``dict(httpx_headers)`` gives them: lower-case names, repeated values joined."""
    flat: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        flat[key] = f"{flat[key]}, {value}" if key in flat else value
    return flat


@asynccontextmanager
async def _failures() -> AsyncIterator[None]:
    """aiohttp's and asyncio's transport failures as this module's (the cause kept)."""
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:  # a deadline above us cancels instead
        raise APITimeoutError("Request timed out.") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise APIConnectionError(f"Connection error: {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- the pool


class Transport:
    """One aiohttp session (a pool of ``connections``) per event loop that uses it."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        connections: int = 100,
        timeout: float | None = 600.0,
        connect_timeout: float | None = 10.0,
        headers: Mapping[str, str] | None = None,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.connections = connections
        self.max_body = max_body
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=timeout)
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
            **(headers or {}),
        }
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._proxy: tuple[Any, Any] = (None, None)

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for old in [old for old in self._sessions if old.is_closed()]:  # its connections died with its loop
                del self._sessions[old]
            connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=0, ttl_dns_cache=300)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                trust_env=False,  # the proxy is read once (``_proxy``), not in a thread per request
                auto_decompress=True,
            )
            self._sessions[loop] = session
            self._proxy = _env_proxy(self.base_url)
        return session

    def _post(self, url: str, body: bytes) -> Any:
        session = self._session()  # first: a new session reads the proxy
        proxy, auth = self._proxy
        return session.post(url, data=body, proxy=proxy, proxy_auth=auth)

    async def post(self, path: str, body: bytes) -> tuple[bytes, dict[str, str]]:
        """POST a JSON body; the answer's bytes (at most ``max_body``) and its headers."""
        async with _failures(), self._post(self.base_url + path, body) as response:
            if response.status >= 400:
                raw = await _read(response, MAX_ERROR_BYTES, clip=True)
                raise status_error(response.status, response.headers, raw)
            return await _read(response, self.max_body), flat_headers(response.headers)

    @asynccontextmanager
    async def stream(self, path: str, body: bytes) -> AsyncIterator[tuple[Any, dict[str, str]]]:
        """POST a JSON body asking for a stream; the open response (read it with ``sse.events``) and its headers."""
        async with _failures(), self._post(self.base_url + path, body) as response:
            if response.status >= 400:
                raw = await _read(response, MAX_ERROR_BYTES, clip=True)
                raise status_error(response.status, response.headers, raw)
            yield response, flat_headers(response.headers)

    async def get(self, url: str, *, timeout: float | None = None) -> int:  # noqa: ASYNC109 (httpx's signature)
        """GET ``url`` (``ModelSession.check_reachable``'s probe of ``/models``): the status, whatever it is."""
        probe = aiohttp.ClientTimeout(total=timeout)
        session = self._session()
        proxy, auth = self._proxy
        async with _failures(), session.get(url, timeout=probe, proxy=proxy, proxy_auth=auth) as response:
            return response.status

    async def aclose(self, *, only_here: bool = False) -> None:
        """Close the running loop's session, and (unless ``only_here``) have every other running loop close its
        own (a closed loop's went with it)."""
        here = asyncio.get_running_loop()
        if only_here:
            session = self._sessions.pop(here, None)
            if session is not None:
                await session.close()
            return
        sessions, self._sessions = self._sessions, {}
        for loop, session in sessions.items():
            if loop is here:
                await session.close()
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(session.close(), loop)


def _env_proxy(base_url: str) -> tuple[Any, Any]:
    """The proxy (and its credentials) the environment names for ``base_url`` (``HTTPS_PROXY``, ``NO_PROXY``, ...),
    as the SDK's httpx client reads them when it is made; ``(None, None)``: straight to the server."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        return get_env_proxy_for_url(URL(base_url))
    except LookupError:
        return None, None


async def _read(response: Any, limit: int, *, clip: bool = False) -> bytes:
    """The whole body, at most ``limit`` bytes: past it, ``clip`` keeps the start, else the answer is refused."""
    declared = response.content_length
    if declared is not None and declared > limit and not clip:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            if clip:
                parts.append(chunk[: len(chunk) - (size - limit)])
                break
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(limit: int) -> ProviderError:
    return ProviderError(
        f"the provider's answer is larger than {limit // (1024 * 1024)} MiB, more than any chat completion "
        "(check --base-url: is it an OpenAI-compatible server?)",
        status=200,
    )
