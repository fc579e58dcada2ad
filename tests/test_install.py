"""chain-runner as a dependency: build the wheel, install it into a fresh venv, use it from another app.

The venv's dependencies (LangChain and the rest) come from the environment running the
tests, whatever it is (a venv, the system Python), through a ``.pth`` file that names its
site-packages directories (no network); the wheel is installed with ``--no-deps``.  A
``.pth`` file's own directory entries are not scanned for further ``.pth`` files, so an
editable install of chain-runner in the test environment stays invisible to the venv.  The app runs from a temporary directory outside
the repository with no ``PYTHONPATH``, so everything it imports from
``chains`` (code and prompt files) must come from the installed wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".benchmarks",
    "out",
    "*.sqlite",
)

APP = '''\
"""A small LangChain app of someone else's that uses chain-runner's chains with its own model."""

import asyncio
import json
import sys
import sysconfig

import yaml
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableLambda, RunnableParallel

import chains
from chains import build_story_chain, get_chain, list_chains
from chains.spec.prompt_spec import packaged_prompts_dir

SEEN = []


class ShoutModel(BaseChatModel):
    """The app's own chat model: answers with the first words of the last message, in capitals."""

    @property
    def _llm_type(self) -> str:
        return "shout"

    def _reply(self, messages) -> str:
        SEEN.append([(m.type, m.text) for m in messages])
        return " ".join(messages[-1].text.split()[:8]).upper()

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=self._reply(messages)))])

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        for word in self._reply(messages).split(" "):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))


async def main() -> None:
    model = ShoutModel()
    story = build_story_chain(model)
    summarize = get_chain("summarize", model)
    app = (
        RunnableParallel(topic=lambda x: x["topic"], story=story)
        | RunnableLambda(lambda x: {"topic": x["topic"], "text": x["story"]})
        | RunnableParallel(topic=lambda x: x["topic"], summary=summarize, length=lambda x: len(x["text"]))
    )
    topics = ["a brave snail", "a dragon who collects teacups", "a robot learning to paint"]
    results = await app.abatch([{"topic": t} for t in topics], config={"max_concurrency": 2})

    events = []
    async for event in app.astream_events({"topic": "a kite"}, version="v2"):
        events.append(event)
    tokens = [e["data"]["chunk"].text for e in events if e["event"] == "on_chat_model_stream"]
    final = [e["data"]["output"] for e in events if e["event"] == "on_chain_end" and not e["parent_ids"]]

    offline = await get_chain("story").ainvoke({"topic": "a lighthouse"})  # the default (offline) model

    prompts = packaged_prompts_dir()
    story_system = yaml.safe_load((prompts / "story.yaml").read_text(encoding="utf-8"))["messages"][0]["content"]
    print(json.dumps({
        "chains_file": chains.__file__,
        "prompts_dir": str(prompts),
        "purelib": sysconfig.get_paths()["purelib"],
        "prefix": sys.prefix,
        "chain_names": [c.name for c in list_chains()],
        "chain_sources": {c.name: list(c.sources) for c in list_chains()},
        "results": results,
        "event_kinds": sorted({e["event"] for e in events}),
        "tokens": tokens,
        "final": final,
        "story_system_prompt": story_system,
        "system_prompts_seen": sorted({text for call in SEEN for kind, text in call if kind == "system"}),
        "offline_story": offline,
    }))


asyncio.run(main())
'''


def run(
    cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 600
) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def outside_env() -> dict[str, str]:
    """The test's (isolated) environment without anything that would point Python at the repo."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def is_inside(path: str | Path, directory: str | Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(directory).resolve())


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout installed (and nothing else of the repo)."""
    workdir = tmp_path_factory.mktemp("install")
    # Build from a copy of the sources, so that the build leaves nothing in the repository.
    source = workdir / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES)
    dist = workdir / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)], cwd=workdir)
    [wheel] = dist.glob("chain_runner-*.whl")
    venv = workdir / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=workdir)
    [site_packages] = (venv / "lib").glob("python*/site-packages")
    here = sysconfig.get_paths()
    (site_packages / "test-environment.pth").write_text(
        "\n".join(dict.fromkeys([here["purelib"], here["platlib"]])) + "\n", encoding="utf-8"
    )
    # pip comes from the test environment but installs into the venv it runs in; an
    # editable chain-runner outside the venv is left alone ("outside environment").
    run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        cwd=workdir,
        env=outside_env(),
    )
    return venv


def test_installed_wheel_works_in_another_langchain_app(venv: Path, tmp_path: Path) -> None:
    app_dir = tmp_path / "someone-elses-app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP, encoding="utf-8")
    report: dict[str, Any] = json.loads(run([str(venv / "bin" / "python"), "app.py"], cwd=app_dir, env=outside_env()))
    # Code and prompt files come from the installed wheel, not from the repository.
    purelib = report["purelib"]
    assert is_inside(report["prefix"], venv)
    assert is_inside(purelib, venv)
    assert is_inside(report["chains_file"], purelib), report["chains_file"]
    assert is_inside(report["prompts_dir"], purelib), report["prompts_dir"]
    assert not is_inside(report["prompts_dir"], ROOT)
    assert {"story", "story_outline", "summarize", "translate", "keywords"} <= set(report["chain_names"])
    assert report["chain_sources"]["story"] == ["prompts/story_outline.yaml", "prompts/story.yaml"]
    # The app's own model received the installed prompt files' messages.
    assert report["story_system_prompt"].strip() in [s.strip() for s in report["system_prompts_seen"]]

    # abatch over the composed chain: one result per topic, each through every step.
    results = report["results"]
    assert [r["topic"] for r in results] == [
        "a brave snail",
        "a dragon who collects teacups",
        "a robot learning to paint",
    ]
    for result in results:
        assert result["summary"].startswith("SUMMARIZE") and result["length"] > 0, result
    # astream_events: the app's model streamed its tokens through the chain; the run ended with its output.
    assert {"on_chain_start", "on_chain_stream", "on_chain_end", "on_chat_model_stream", "on_prompt_end"} <= set(
        report["event_kinds"]
    )
    assert report["tokens"] and all(t == t.upper() for t in report["tokens"])
    [final] = report["final"]
    assert final["topic"] == "a kite" and final["summary"].startswith("SUMMARIZE")
    assert "".join(report["tokens"]).endswith(final["summary"])  # the last step's streamed tokens are its output
    # get_chain("story") with no model: the offline model, no key, no network.
    assert isinstance(report["offline_story"], str) and len(report["offline_story"]) > 50


def test_installed_console_script(venv: Path, tmp_path: Path) -> None:
    script = str(venv / "bin" / "chain-runner")
    listing = run([script, "list", "--json"], cwd=tmp_path, env=outside_env())
    chains = {c["name"]: c for c in json.loads(listing)}
    assert {"story", "summarize", "keywords"} <= set(chains)
    stories = run(
        [script, "story", "--topics", "-", "--model", "fake", "-q"],
        cwd=tmp_path,
        env=outside_env(),
        stdin="a brave snail\n",
    )
    assert "── [0] a brave snail" in stories and len(stories) > 100
