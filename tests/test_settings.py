"""One owner per setting (issue 12): ``prompts_dirs`` in ``RunSettings``, the environment read in
``chains/settings.py`` only, no test-only knob among the settings, and ``ModelSession.check`` for ``serve``."""

from __future__ import annotations

import ast
import inspect
import socket
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import ROOT, cli, one_error_line
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.cli.commands import RunOptions, list_command, run_command, show_command
from chains.errors import ChainRunnerError, ModelConfigError
from chains.providers.models import NO_KEY_NOTICE, ModelSession
from chains.providers.tracing import disable_unreachable_tracing, endpoint_address
from chains.server import create_app
from chains.settings import ENVIRONMENT, Environment, RunSettings

ECHO = "name: echo\ndescription: Echo.\ninput_variables: [text]\nmessages:\n  - role: human\n    content: '{text}'\n"


def echo_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "mine"
    directory.mkdir()
    (directory / "echo.yaml").write_text(ECHO, encoding="utf-8")
    return directory


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ----------------------------------------------------------------------------- 1. prompts_dirs: RunSettings


def test_prompts_dirs_has_one_owner() -> None:
    assert "prompts_dirs" in RunSettings.model_fields
    assert "prompts_dirs" not in {f.name for f in fields(RunOptions)}
    assert "prompts_dirs" not in inspect.signature(create_app).parameters


async def test_run_list_and_show_take_the_prompts_dirs_of_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = RunSettings(model="fake", prompts_dirs=[str(echo_dir(tmp_path))])
    assert list_command(mine) == 0
    assert any(line.startswith("echo ") for line in capsys.readouterr().out.splitlines())
    assert show_command("echo", mine) == 0
    assert capsys.readouterr().out.startswith("echo: Echo.")
    (tmp_path / "in.txt").write_text("hello there\n", encoding="utf-8")
    options = RunOptions(chain="echo", source=str(tmp_path / "in.txt"), output=str(tmp_path / "o.jsonl"), quiet=True)
    assert await run_command(options, mine) == 0
    assert '"error": null' in (tmp_path / "o.jsonl").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- 2. the environment: one module


def _reads_of_the_environment(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"))
        or (isinstance(node, ast.Name) and node.id in ("environ", "getenv"))
        or (isinstance(node, ast.alias) and node.name in ("environ", "getenv"))
    ]


def test_only_the_settings_module_reads_the_environment() -> None:
    modules = [*sorted((ROOT / "chains").rglob("*.py")), ROOT / "runner.py"]
    elsewhere = [
        hit for path in modules if path != ROOT / "chains/settings.py" for hit in _reads_of_the_environment(path)
    ]
    assert elsewhere == []


class Recording(dict[str, str]):
    """A real mapping that remembers every name it was asked for."""

    def __init__(self, *args: object, **kwargs: str) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


def test_the_documented_variables_are_exactly_the_ones_read() -> None:
    env = Recording()
    Environment.read(env)
    assert env.asked == set(ENVIRONMENT)
    for name in ENVIRONMENT:  # each one changes what the program sees
        assert Environment.read({name: "true"}) != Environment.read({}), name


def test_the_environment_read_once_gives_every_variable() -> None:
    seen = Environment.read(
        {
            "OPENAI_API_KEY": "sk-x",
            "OPENAI_BASE_URL": "",  # empty: unset
            "RUNNER_API_KEY": "serve-key",
            "LANGCHAIN_TRACING_V2": " TRUE ",
            "LANGCHAIN_ENDPOINT": "http://127.0.0.1:9",
            "ANTHROPIC_API_KEY": "sk-ant",
        }
    )
    assert seen == Environment(
        openai_api_key="sk-x",
        openai_base_url=None,
        anthropic_api_key="sk-ant",
        runner_api_key="serve-key",
        tracing=True,
        tracing_endpoint="http://127.0.0.1:9",
    )
    assert Environment.read({}) == Environment()
    assert RunSettings.from_env({"OPENAI_API_KEY": "sk-x"}).api_key is not None


def test_the_key_comes_from_the_models_provider() -> None:
    env = {"OPENAI_API_KEY": "sk-openai", "ANTHROPIC_API_KEY": "sk-ant"}
    anthropic = RunSettings.from_env(env, model="anthropic:claude-haiku-4-5")
    openai = RunSettings.from_env(env, model="openai:gpt-4o-mini")
    assert anthropic.api_key is not None and anthropic.api_key.get_secret_value() == "sk-ant"
    assert openai.api_key is not None and openai.api_key.get_secret_value() == "sk-openai"
    assert RunSettings.from_env({"OPENAI_API_KEY": "sk-openai"}, model="anthropic:claude-haiku-4-5").api_key is None


def test_several_endpoints_are_one_list_first_first() -> None:
    settings = RunSettings(base_url="http://a:1/v1", extra_base_urls=["http://b:2/v1", "http://a:1/v1"])
    assert settings.base_urls == ["http://a:1/v1", "http://b:2/v1"]
    with pytest.raises(ModelConfigError, match="--base-url 'ftp://c/v1'"):
        RunSettings.from_env({}, base_url="http://a:1/v1", extra_base_urls=["ftp://c/v1"])
    with pytest.raises(ValueError, match="need base_url"):
        RunSettings(extra_base_urls=["http://b:2/v1"])


ENV_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
ENVS = st.dictionaries(st.sampled_from([*ENVIRONMENT, "OTHER"]), ENV_TEXT, max_size=8)


@settings(max_examples=300, deadline=None)
@given(ENVS)
def test_any_environment_is_settings_or_one_project_error(env: Mapping[str, str]) -> None:
    Environment.read(env)  # never raises
    try:
        RunSettings.from_env(env)
    except ChainRunnerError as exc:
        assert "\n" not in str(exc) and "OPENAI_BASE_URL" in str(exc)


@settings(max_examples=500, deadline=None)
@given(ENV_TEXT | st.from_regex(r"(?i)https?://[^/?#]{0,70}(:[0-9]{0,7})?(/.{0,10})?", fullmatch=True))
def test_any_tracing_endpoint_is_an_address_or_none(text: str) -> None:
    address = endpoint_address(text)
    if address is not None:
        host, port = address
        assert host and 0 < port < 65536


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://" + "a" * 70 + ".invalid", "http://127.0.0.1:99999"])
def test_a_malformed_tracing_endpoint_turns_tracing_off_in_one_line(endpoint: str) -> None:
    """``LANGSMITH_ENDPOINT=http://[::1`` (or a host label over 63 characters) crashed the run with a
    ``ValueError`` / ``UnicodeError``; it is an endpoint that does not answer."""
    env = {"LANGSMITH_TRACING": "true", "LANGSMITH_ENDPOINT": endpoint}
    warning = disable_unreachable_tracing(timeout=0.5, env=env)
    assert warning is not None and "\n" not in warning and "LANGSMITH_ENDPOINT" in warning
    assert env["LANGSMITH_TRACING"] == "false"


def test_a_malformed_tracing_endpoint_is_one_warning_for_the_cli(tmp_path: Path) -> None:
    from conftest import runner_env

    (tmp_path / "t.txt").write_text("a kite\n", encoding="utf-8")
    env = runner_env(LANGSMITH_TRACING="true", LANGSMITH_ENDPOINT="http://[::1")
    result = cli("story", "--topics", "t.txt", "--model", "fake", "-q", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "warning: LangSmith tracing is on but http://[::1 does not answer; tracing is off for this run "
        "(check LANGSMITH_ENDPOINT, or unset LANGSMITH_TRACING)"
    ]


# ----------------------------------------------------------------------------- 3. no test-only knob among the settings


def test_test_only_knobs_are_not_settings() -> None:
    assert "rate_window_s" not in RunSettings.model_fields
    with pytest.raises(ValueError, match="rate_window_s"):
        RunSettings(rate_window_s=0.5)  # type: ignore[call-arg]
    delay = RunSettings.model_fields["fake_token_delay"].description or ""
    assert "--fake-delay" in delay and "offline" in delay


# ----------------------------------------------------------------------------- 4. ModelSession.check


def _refusals(tmp_path: Path) -> list[RunSettings]:
    local = "http://127.0.0.1:9/v1"
    return [
        RunSettings(model="not a spec"),
        RunSettings(model="openai:gpt-4o-mini"),  # no key, no base URL
        RunSettings(model="openai:mine", base_url=local, max_cost=1.0),  # no price for it
        RunSettings(model="fake", prices=str(tmp_path / "missing.json")),
        RunSettings(model="fake", cache=str(tmp_path)),  # a directory: not a sqlite file
        RunSettings(model="anthropic:claude-3-5-haiku-latest"),  # langchain-anthropic is not installed
    ]


async def test_check_refuses_what_a_session_refuses_with_the_same_line(tmp_path: Path) -> None:
    for bad in _refusals(tmp_path):
        with pytest.raises(ChainRunnerError) as checked:
            ModelSession.check(bad)
        with pytest.raises(ChainRunnerError) as opened:
            session = ModelSession(bad)
            try:
                session.check_budget_priced()
            finally:
                await session.aclose()
        assert str(checked.value) == str(opened.value), bad
        assert "\n" not in str(checked.value)


def test_check_refuses_a_base_url_that_skipped_validation() -> None:
    bypassed = RunSettings(model="openai:mine").model_copy(update={"base_url": "ftp://example.com/v1"})
    with pytest.raises(ChainRunnerError, match=r"--base-url 'ftp://example.com/v1': is not an http"):
        ModelSession.check(bypassed)


def test_check_gives_the_notice_a_session_would(tmp_path: Path) -> None:
    assert ModelSession.check(RunSettings()) == NO_KEY_NOTICE
    notice = ModelSession.check(RunSettings(base_url="http://127.0.0.1:9/v1")) or ""
    assert "--model openai:NAME" in notice
    assert ModelSession.check(RunSettings(model="openai:gpt-4o", api_key="k", max_cost=1.0)) is None
    priced = tmp_path / "p.json"
    priced.write_text('{"mine": {"input": 1, "output": 2}}')
    assert (
        ModelSession.check(RunSettings(model="openai:mine", base_url="http://127.0.0.1:9/v1", prices=str(priced)))
        is None
    )


def test_serve_refuses_max_cost_without_a_price_before_listening(tmp_path: Path) -> None:
    """The CLI refused ``--max-cost`` for a model without a price; ``serve`` started, and every request got a 402."""
    port = str(closed_port())
    result = cli(
        "serve", "--port", port, "--model", "openai:mine", "--base-url", "http://127.0.0.1:9/v1", "--max-cost", "1",
        cwd=tmp_path,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--max-cost needs a price for mine" in one_error_line(result.stderr)


def test_a_fallback_of_another_provider_gets_its_own_key_never_the_runs() -> None:
    env = {"OPENAI_API_KEY": "sk-openai", "ANTHROPIC_API_KEY": "sk-ant"}
    settings = RunSettings.from_env(env, model="anthropic:claude-haiku-4-5", fallback_models=["openai:gpt-4o-mini"])
    anthropic, openai = settings.key_for("anthropic"), settings.key_for("openai")
    assert anthropic is not None and anthropic.get_secret_value() == "sk-ant"
    assert openai is not None and openai.get_secret_value() == "sk-openai"
    alone = RunSettings.from_env({"ANTHROPIC_API_KEY": "sk-ant"}, model="anthropic:x", fallback_models=["openai:y"])
    assert alone.key_for("openai") is None  # no OpenAI key: none is made up from Anthropic's
    assert "sk-ant" not in repr(alone) and "sk-openai" not in repr(settings)
