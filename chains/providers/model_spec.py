"""Which model a run uses: ``--model PROVIDER:MODEL`` parsed, the default chosen, and whose prices apply."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from chains.engine.resume import OPENAI_ENDPOINT, normalise_endpoint
from chains.errors import ModelConfigError
from chains.settings import DEFAULT_OPENAI_MODEL, FAKE_MODEL, RunSettings

_SPEC = re.compile(r"^(?P<provider>[a-z][a-z0-9_-]*):(?P<name>\S+)$")
NO_KEY_NOTICE = (
    "no OPENAI_API_KEY set: using the offline 'fake' model "
    "(set OPENAI_API_KEY, or pass --model/--base-url, to use a real one)"
)


@dataclass(frozen=True)
class ModelSpec:
    provider: str
    name: str

    def __str__(self) -> str:
        return FAKE_MODEL if self.provider == FAKE_MODEL else f"{self.provider}:{self.name}"


def parse_model_spec(text: str) -> ModelSpec:
    """``openai:gpt-4o-mini`` → ModelSpec; ``fake`` is the offline model."""
    text = text.strip()
    if text in (FAKE_MODEL, "fake:fake"):
        return ModelSpec(FAKE_MODEL, FAKE_MODEL)
    match = _SPEC.match(text)
    if not match:
        raise ModelConfigError(
            f"--model {text!r} is not PROVIDER:MODEL; use e.g. openai:gpt-4o-mini, or 'fake' for the offline model"
        )
    return ModelSpec(match["provider"], match["name"])


def resolve_model_spec(settings: RunSettings) -> tuple[ModelSpec, str | None]:
    """The model to use and, when it was chosen for the user, a one-line notice.

    OpenAI's default model name means nothing to another server (it answers 404, or serves
    whatever it has under that name), so sending it there is said, with how to choose.
    """
    if settings.model:
        return parse_model_spec(settings.model), None
    if settings.base_url and not is_openai_endpoint(settings.base_url):
        spec = parse_model_spec(DEFAULT_OPENAI_MODEL)
        url = settings.base_url.rstrip("/")
        return spec, (
            f"no --model given: asking {url} for model {spec.name!r}; choose the server's model with "
            f"--model openai:NAME (GET {url}/models lists them)"
        )
    if settings.api_key is not None or settings.base_url:
        return parse_model_spec(DEFAULT_OPENAI_MODEL), None
    return ModelSpec(FAKE_MODEL, FAKE_MODEL), NO_KEY_NOTICE


def is_openai_endpoint(base_url: str | None) -> bool:
    """No base URL, or OpenAI's own however it is spelled (``https://API.openai.com:443/v1/``)."""
    return not base_url or normalise_endpoint(base_url) == OPENAI_ENDPOINT


def builtin_prices_apply(spec: ModelSpec, base_url: str | None) -> bool:
    """The built-in (list) prices are the cost of OpenAI's and Anthropic's models at the provider itself, and of
    the offline model; elsewhere (a compatible server, a proxy) the price is whatever ``--prices`` says."""
    if spec.provider == "anthropic":
        return not base_url or (urlsplit(base_url).hostname or "").lower() == "api.anthropic.com"
    return spec.provider == FAKE_MODEL or (spec.provider == "openai" and is_openai_endpoint(base_url))
