"""What every request passes before a route: the key (``Authorization: Bearer``), the body limit, and the docs
pages' Content-Security-Policy; plus the error JSON they (and the app) answer with."""

import hmac
import json
from typing import Any

from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_URL, REDOC_URL, OPENAPI_URL = "/docs", "/redoc", "/openapi.json"
DOCS_ASSETS = "/static-offline-docs"  # Swagger UI's and ReDoc's files, from the fastapi-offline package
# Routes that answer without the key (see the module docstring for why the docs are among them).
PUBLIC_PATHS = frozenset({"/healthz", DOCS_URL, f"{DOCS_URL}/oauth2-redirect", REDOC_URL, OPENAPI_URL})
# The docs pages may load nothing but this server's own files: a URL hard-coded in a bundle (ReDoc's logo,
# on a CDN) is refused by the browser instead of leaving the machine.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:"
)


class ErrorJSONResponse(JSONResponse):
    """Error JSON that can always be sent: a lone surrogate (say, in an unknown field's name) is written
    as the JSON escape ``\\ud800`` instead of failing the UTF-8 encoding."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")  # surrogates only occur inside JSON strings


def error_json(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return ErrorJSONResponse(
        {"error": {"type": type_, "message": message, **extra}}, status_code=status, headers=headers
    )


# ----------------------------------------------------------------------------- middleware


def bearer_key(header: bytes) -> bytes | None:
    """The key of an ``Authorization: Bearer <key>`` header, else None.

    The scheme is matched in any case (RFC 7235: ``bearer``, ``BEARER``) and any spaces may follow it."""
    scheme, space, key = header.partition(b" ")
    if not space or scheme.lower() != b"bearer":
        return None
    return key.lstrip(b" ")


def _needs_key(path: str) -> bool:
    return path not in PUBLIC_PATHS and not path.startswith(DOCS_ASSETS + "/")


# Documents the key in the OpenAPI schema (the Authorize button of /docs); the middleware checks it.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="The server's key: RUNNER_API_KEY (or --api-key) of `runner.py serve`.",
)


class AuthMiddleware:
    """``Authorization: Bearer <key>`` on every route but ``/healthz`` and the docs (constant-time check)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _needs_key(scope["path"]):
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            given = bearer_key(header)
            if given is None or not hmac.compare_digest(given, self.expected):
                response = error_json(
                    401,
                    "Unauthorized",
                    "missing or wrong API key; send 'Authorization: Bearer <key>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class DocsPolicyMiddleware:
    """Sends ``DOCS_POLICY`` as the ``Content-Security-Policy`` of the docs pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in (DOCS_URL, REDOC_URL):
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                policy = (b"content-security-policy", DOCS_POLICY.encode())
                message = {**message, "headers": [*message.get("headers", []), policy]}
            await send(message)

        await self.app(scope, receive, with_policy)


class BodyLimitMiddleware:
    """Reads at most ``limit`` bytes of a request body, else answers 413; replays the body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = error_json(413, "PayloadTooLarge", f"request body is over the limit of {self.limit} bytes")
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.limit:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)
