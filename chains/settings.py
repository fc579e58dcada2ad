"""One typed settings object for a run, the one place it becomes a ``RunnableConfig``, and the one place
the program reads its environment variables.

Every variable chain-runner reads is in ``ENVIRONMENT`` below and is read by ``Environment.read``; no other
module looks at ``os.environ``, so this list is the whole story.  Some variables are read by the libraries
underneath, never by chain-runner, and are not listed as ours: langchain-openai / the OpenAI SDK read
``OPENAI_ORG_ID`` and ``OPENAI_PROJECT_ID``; another provider's integration reads its own key (e.g.
``ANTHROPIC_API_KEY``); langsmith reads ``LANGSMITH_API_KEY``, ``LANGSMITH_PROJECT`` and the rest of its
variables; tiktoken reads ``TIKTOKEN_CACHE_DIR``; the HTTP clients may read the proxy variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from chains.errors import ModelConfigError

if TYPE_CHECKING:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.runnables import RunnableConfig

DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 600.0
"""Per attempt, the whole answer included: long enough for a long answer from a slow local server."""
FLEX_TIMEOUT_S = 900.0
"""OpenAI's advice for the flex tier, whose answers may queue for many minutes."""
DEFAULT_BATCH_SIZE = 10_000
DEFAULT_MAX_RETRIES = 5
DEFAULT_OPENAI_MODEL = "openai:gpt-4o-mini"
FAKE_MODEL = "fake"
MAX_URL_LENGTH = 2048
DEFAULT_TRACING_ENDPOINT = "https://api.smith.langchain.com"

TRACING_VARS = ("LANGSMITH_TRACING", "LANGSMITH_TRACING_V2", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING")
"""Any of them ``true`` turns LangSmith tracing on (langsmith's own spellings, old and new)."""
TRACING_ENDPOINT_VARS = ("LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT")

ENVIRONMENT: dict[str, str] = {
    "OPENAI_API_KEY": "the provider's key (RunSettings.api_key); without it and without a base URL the default "
    "model is the offline one",
    "OPENAI_BASE_URL": "an OpenAI-compatible server (RunSettings.base_url); --base-url wins; empty counts as unset",
    "ANTHROPIC_API_KEY": "the key for --model anthropic:NAME (RunSettings.api_key when the model is Anthropic's)",
    "RUNNER_API_KEY": "the key `serve` requires as 'Authorization: Bearer KEY'; --api-key wins",
    **dict.fromkeys(TRACING_VARS, "LangSmith tracing on (read by langsmith; we probe its endpoint once)"),
    **dict.fromkeys(TRACING_ENDPOINT_VARS, "LangSmith's endpoint (read by langsmith; the one we probe)"),
}
"""Every environment variable chain-runner reads, and what for."""


@dataclass(frozen=True)
class Environment:
    """What chain-runner takes from the environment: ``ENVIRONMENT``'s variables, read once, here only.

    An empty value counts as unset, as a shell user expects of ``VAR= runner.py ...``.
    """

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    anthropic_api_key: str | None = None
    runner_api_key: str | None = None
    tracing: bool = False
    tracing_endpoint: str = DEFAULT_TRACING_ENDPOINT

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> Environment:
        """The process's environment (or ``env``, for tests and embedders)."""
        env = os.environ if env is None else env
        return cls(
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
            runner_api_key=env.get("RUNNER_API_KEY") or None,
            tracing=any(env.get(name, "").strip().lower() == "true" for name in TRACING_VARS),
            tracing_endpoint=next((env[name] for name in TRACING_ENDPOINT_VARS if env.get(name)), None)
            or DEFAULT_TRACING_ENDPOINT,
        )


def turn_tracing_off(env: MutableMapping[str, str] | None = None) -> None:
    """Switch LangSmith tracing off for this process: langsmith reads the same variables, so they are set to
    ``false`` (the one change the program makes to its environment)."""
    env = os.environ if env is None else env
    for name in TRACING_VARS:
        if name in env:
            env[name] = "false"


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
    base_url: str | None = Field(default=None, description="the model's server (OpenAI-compatible, or the provider's)")
    extra_base_urls: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="more endpoints serving the same model (--base-url given again): requests are spread over all",
    )
    api_key: SecretStr | None = Field(
        default=None, description="API key; defaults to ANTHROPIC_API_KEY for an Anthropic model, else OPENAI_API_KEY"
    )
    provider_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="keys of other providers' fallback models, by provider (from their own variables: a key is "
        "never sent to another provider)",
    )
    max_concurrency: int = Field(default=DEFAULT_MAX_CONCURRENCY, ge=1, le=10_000)
    stream: bool = Field(default=False, description="stream each request (live tokens, time to first token)")
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1)
    timeout: float = Field(
        default=DEFAULT_TIMEOUT_S, gt=0, allow_inf_nan=False, description="seconds per attempt, whole answer included"
    )
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0, le=100)
    fake_token_delay: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="the offline model's pace (--fake-delay): seconds per token, e.g. to watch it stream; "
        "no effect on any other model",
    )
    http_backend: Literal["lean", "aiohttp", "httpx"] = Field(
        default="lean",
        description="how openai: models talk HTTP: lean (chains/providers/lean, no OpenAI SDK; the default, chosen by "
        "benchmarks/ scenario 9 and the standard tests), aiohttp or httpx (ChatOpenAI on that SDK transport); the "
        "batch tier and Anthropic's models use their SDK (on aiohttp unless httpx is asked for)",
    )
    rpm: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="requests per minute, shared by the whole run"
    )
    tpm: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="tokens per minute, shared by the whole run"
    )
    max_cost: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="stop admitting inputs past this many USD"
    )
    prices: str | None = Field(default=None, description="JSON/YAML price table overriding the built-in one")
    cache: str | None = Field(default=None, description="sqlite file answering identical requests")
    prompts_dirs: list[str] = Field(
        default_factory=list,
        description="extra prompt directories (--prompts-dir), for every command: run, list, show and serve",
    )

    fallback_models: list[str] = Field(
        default_factory=list,
        max_length=10,
        description="PROVIDER:MODEL to try, in order, when a request fails for a reason another model may not share",
    )
    repair_attempts: int | None = Field(
        default=None,
        ge=0,
        le=10,
        description="JSON answers that break their schema are asked again up to N times (None: the prompt file's, or 2)",
    )
    tier: Literal["online", "flex", "batch"] = Field(
        default="online",
        description="online; flex (OpenAI's service_tier=flex: batch prices, slower, may refuse when busy); "
        "batch (the provider's batch API: about half the price, answers within hours)",
    )
    flex_fallback: bool = Field(
        default=False, description="flex tier: send a request the flex tier has no capacity for at the standard tier"
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE,
        ge=1,
        le=1_000_000,
        description="batch tier: inputs in flight at once, so the most requests of one batch stage",
    )
    batch_poll_s: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="batch tier: the longest wait between status checks"
    )

    @model_validator(mode="before")
    @classmethod
    def _flex_waits_longer(cls, data: Any) -> Any:
        """The flex tier's answers may queue: without an explicit timeout, it gets OpenAI's suggested 15 minutes."""
        if isinstance(data, dict) and data.get("tier") == "flex" and data.get("timeout") is None:
            data = {**data, "timeout": FLEX_TIMEOUT_S}
        return data

    @property
    def inputs_in_flight(self) -> int:
        """How many inputs a run works on at once: ``max_concurrency``, or ``batch_size`` in the batch tier
        (where a request waits for its batch, not for a connection)."""
        return self.batch_size if self.tier == "batch" else self.max_concurrency

    @field_validator("base_url")
    @classmethod
    def _valid_base_url(cls, value: str | None) -> str | None:
        if value is not None:
            problem = _url_problem(value)
            if problem is not None:
                raise ValueError(f"base_url {problem}; use e.g. http://localhost:8000/v1")
        return value

    @field_validator("extra_base_urls")
    @classmethod
    def _valid_extra_base_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            problem = _url_problem(url)
            if problem is not None:
                raise ValueError(f"base_url {problem}; use e.g. http://localhost:8000/v1")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _endpoints_need_a_first(self) -> RunSettings:
        if self.extra_base_urls and self.base_url is None:
            raise ValueError("extra_base_urls need base_url (the first endpoint)")
        return self

    @property
    def base_urls(self) -> list[str]:
        """Every endpoint of the model, the first one (``base_url``) first; empty for the provider's default."""
        if self.base_url is None:
            return []
        return list(dict.fromkeys([self.base_url, *self.extra_base_urls]))

    @field_validator("prompts_dirs")
    @classmethod
    def _each_dir_once(cls, value: list[str]) -> list[str]:
        """``--prompts-dir d --prompts-dir d`` is one directory, not every prompt of ``d`` "defined twice"."""
        return list(dict.fromkeys(value))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **values: Any) -> RunSettings:
        """Settings with the key and base URL taken from the environment (``Environment.read(env)``) when not given.

        A bad base URL is a ``ModelConfigError`` naming where it came from (``--base-url`` or
        ``OPENAI_BASE_URL``); an empty ``OPENAI_BASE_URL`` counts as unset.
        """
        environment = Environment.read(env)
        values = {k: v for k, v in values.items() if v is not None}
        main = _provider(values.get("model"))
        anthropic = main == "anthropic"
        keys = {"openai": environment.openai_api_key, "anthropic": environment.anthropic_api_key}
        key = keys["anthropic"] if anthropic else keys["openai"]
        if "api_key" not in values and key:
            values["api_key"] = key
        others = {_provider(text) for text in values.get("fallback_models") or ()} - {main, "fake"}
        if "provider_keys" not in values:
            values["provider_keys"] = {name: keys[name] for name in sorted(others) if keys.get(name)}
        for url in values.get("extra_base_urls") or ():
            check_base_url(url, "--base-url")
        if "base_url" in values:
            check_base_url(values["base_url"], "--base-url")
        elif environment.openai_base_url and not anthropic:
            values["base_url"] = check_base_url(environment.openai_base_url, "OPENAI_BASE_URL")
        return cls(**values)

    def key_for(self, provider: str) -> SecretStr | None:
        """The key for a model of ``provider``: ``api_key`` for the run's own model's provider, else that provider's
        own (``provider_keys``)."""
        return self.api_key if provider == _provider(self.model) else self.provider_keys.get(provider)

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
        if self.repair_attempts is not None:  # read by chains.spec.repair at run time
            config["configurable"] = {"repair_attempts": self.repair_attempts}
        return config


def _provider(model: Any) -> str:
    """The provider of a ``--model`` value: ``anthropic:claude-…`` → anthropic; none given → openai (the default)."""
    text = str(model or "").strip()
    if text in ("fake", "fake:fake"):
        return "fake"
    return text.split(":", 1)[0] if ":" in text else "openai"
