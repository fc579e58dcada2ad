"""Every chain over HTTP: ``create_app(settings)`` builds the FastAPI app, ``serve`` runs it.

One ``ModelSession`` (one model client, one connection pool, one set of
limits) is built when the app starts and shared by every request: each run is
given ``limits=session.limits``, so ``--max-concurrency`` holds across all
concurrent HTTP requests together.  Chains are built once per name.

Routes: ``GET /chains``, ``POST /chains/{name}/invoke|batch|stream`` (one
route per chain, with request and response models built from the chain's
declared inputs, so ``/docs`` shows them), ``GET /healthz`` and ``GET /metrics``.
A client that disconnects cancels its upstream model request.  Each finished
input is logged as one JSONL line in a background task after the response.
On SIGTERM, open streams run on for ``--grace`` seconds, then get an ``error``
event saying the server is stopping; ``serve`` then exits 130, like the CLI.

The docs work offline: ``/docs`` (Swagger UI 5, which renders FastAPI's OpenAPI 3.1) and ``/redoc`` load
their scripts and styles from the ``fastapi-offline`` package, served under ``/static-offline-docs/``,
never from a CDN.  With a key (``RUNNER_API_KEY``), every route needs ``Authorization: Bearer <key>`` except
``/healthz`` and the docs themselves: the pages, their assets and ``/openapi.json``.  A person has to load
the page before they can press Authorize and paste the key, and the page reads ``/openapi.json`` without
it; what that shows (chain names, input fields, descriptions) is the shape of the API, never a model call,
a metric or a record.  Every chain route, ``/chains`` and ``/metrics`` still need the key; an unknown path
needs it too, so nothing new is public by accident.  The key is declared in the OpenAPI document as an
HTTP bearer scheme on exactly those routes, which gives ``/docs`` its Authorize button; the scheme only
documents (``auto_error=False``): ``middleware.AuthMiddleware`` does the checking, so a 401 has our own body.  The two
pages carry a Content-Security-Policy that lets the browser fetch from this server only, so a URL built
into a bundle (ReDoc's logo) or written in a prompt's description is never requested from elsewhere.
"""

from chains.server.app import create_app
from chains.server.serve import serve

__all__ = ["create_app", "serve"]
