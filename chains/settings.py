"""One typed settings object for a run, and the one place it becomes a ``RunnableConfig``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from chains.errors import ModelConfigError

if TYPE_CHECKING:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.runnables import RunnableConfig

DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 600.0
"""Per attempt, the whole answer included: long enough for a long answer from a slow local server."""
DEFAULT_MAX_RETRIES = 5
DEFAULT_OPENAI_MODEL = "openai:gpt-4o-mini"
FAKE_MODEL = "fake"
MAX_URL_LENGTH = 2048


def check_base_url(url: str, source: str = "--base-url") -> str:
    """``url`` if it can be an OpenAI-compatible endpoint, else one ``ModelConfigError`` line naming ``source``.

    The one place base URLs are checked, before anything uses them: a bad one must be a
    usage error naming the flag (or variable), not an exception from deep in an HTTP client.
    """
    problem = _url_problem(url)
    if problem is None:
        return url
    shown = repr(url if len(url) <= 80 else url[:79] + "…")
    raise ModelConfigError(f"{source} {shown}: {problem}; use e.g. http://localhost:8000/v1")


def _url_problem(url: str) -> str | None:
    if not url:
        return "is empty"
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6] bracket
        return "is not a valid URL (check the host)"
    try:
        port = parts.port
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    if parts.scheme.lower() not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if port == 0:
        return "has port 0; use the port the server listens on"
    return None


class RunSettings(BaseModel):
    """How a run talks to its model and how hard it pushes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str | None = Field(
        default=None,
        description="PROVIDER:MODEL (e.g. openai:gpt-4o-mini) or 'fake'; None picks the default",
    )
    base_url: str | None = Field(default=None, description="OpenAI-compatible server URL")
    api_key: SecretStr | None = Field(default=None, description="API key; defaults to OPENAI_API_KEY")
    max_concurrency: int = Field(default=DEFAULT_MAX_CONCURRENCY, ge=1, le=10_000)
    stream: bool = Field(default=False, description="stream each request (live tokens, time to first token)")
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1)
    timeout: float = Field(
        default=DEFAULT_TIMEOUT_S, gt=0, allow_inf_nan=False, description="seconds per attempt, whole answer included"
    )
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0, le=100)
    fake_token_delay: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="seconds per token on the fake model"
    )
    http_backend: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp", description="transport of the OpenAI client's connection pool"
    )
    rpm: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="requests per minute, shared by the whole run"
    )
    tpm: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="tokens per minute, shared by the whole run"
    )
    rate_window_s: float = Field(
        default=60.0, gt=0, allow_inf_nan=False, description="the rate-limit window (tests shrink it)"
    )
    max_cost: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="stop admitting inputs past this many USD"
    )
    prices: str | None = Field(default=None, description="JSON/YAML price table overriding the built-in one")
    cache: str | None = Field(default=None, description="sqlite file answering identical requests")
    prompts_dirs: list[str] = Field(default_factory=list, description="extra prompt directories")

    @field_validator("base_url")
    @classmethod
    def _valid_base_url(cls, value: str | None) -> str | None:
        if value is not None:
            problem = _url_problem(value)
            if problem is not None:
                raise ValueError(f"base_url {problem}; use e.g. http://localhost:8000/v1")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **values: Any) -> RunSettings:
        """Settings with the key and base URL taken from the environment when not given.

        A bad base URL is a ``ModelConfigError`` naming where it came from (``--base-url`` or
        ``OPENAI_BASE_URL``); an empty ``OPENAI_BASE_URL`` counts as unset.
        """
        env = os.environ if env is None else env
        values = {k: v for k, v in values.items() if v is not None}
        if "api_key" not in values and env.get("OPENAI_API_KEY"):
            values["api_key"] = env["OPENAI_API_KEY"]
        if "base_url" in values:
            check_base_url(values["base_url"], "--base-url")
        elif env.get("OPENAI_BASE_URL"):
            values["base_url"] = check_base_url(env["OPENAI_BASE_URL"], "OPENAI_BASE_URL")
        return cls(**values)

    def model_overrides(self) -> dict[str, Any]:
        """Request parameters given explicitly for the run; they win over prompt files."""
        overrides: dict[str, Any] = {}
        if self.temperature is not None:
            overrides["temperature"] = self.temperature
        if self.max_tokens is not None:
            overrides["max_tokens"] = self.max_tokens
        return overrides

    def to_runnable_config(
        self,
        *,
        callbacks: Sequence[BaseCallbackHandler] = (),
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        run_name: str | None = None,
    ) -> RunnableConfig:
        """The ``RunnableConfig`` for one input of this run."""
        config: RunnableConfig = {  # a TypedDict: no LangChain import needed at run time
            "max_concurrency": self.max_concurrency,
            "callbacks": list(callbacks),
            "tags": ["chain-runner", *tags],
            "metadata": dict(metadata or {}),
        }
        if run_name:
            config["run_name"] = run_name
        return config
