"""Every code block in README.md and docs/ is true: Python runs, prompt files load, CLI lines parse.

- ``python`` blocks run as scripts, as a reader who saves one to a file would run it (a block
  right after ``<!-- notebook cell: top-level await -->`` runs as a notebook cell, where a
  top-level ``await`` is allowed).  OpenAI-bound blocks talk to the fault server on 127.0.0.1
  through ``OPENAI_BASE_URL``, as the README tells a reader to set it.
- ``yaml`` blocks that are prompt files (they have a ``name``) pass the strict validator; the
  others are at least valid YAML.
- every ``python runner.py ...`` command in a ``bash`` block parses with the real argument parser.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, runner_env
from fault_server import FaultServer

import runner
from chains.spec.prompt_spec import parse_spec

NOTEBOOK_MARK = "<!-- notebook cell: top-level await -->"
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    file: str
    line: int
    lang: str
    text: str
    notebook: bool

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match and match.group(1):
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            notebook = start > 0 and lines[start - 1].strip() == NOTEBOOK_MARK
            label = str(path.relative_to(ROOT))
            found.append(Block(label, start + 1, match.group(1), "\n".join(body) + "\n", notebook))
        i += 1
    return found


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ALL = [block for doc in DOCS for block in blocks(doc)]


def of(lang: str) -> list[pytest.param]:  # type: ignore[valid-type]
    return [pytest.param(b, id=b.id) for b in ALL if b.lang == lang]


def test_the_readme_has_the_blocks_this_file_checks() -> None:
    langs = {b.lang for b in ALL}
    assert {"python", "yaml", "bash"} <= langs
    assert any(b.notebook for b in ALL), f"no block is marked {NOTEBOOK_MARK!r}"


NOTEBOOK_RUNNER = """
import ast, asyncio, sys
source = open(sys.argv[1], encoding="utf-8").read()
code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


@pytest.mark.parametrize("block", of("python"))
def test_python_blocks_run(block: Block, fault_server: FaultServer, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(block.text, encoding="utf-8")
    command = [sys.executable, "-c", NOTEBOOK_RUNNER, str(script)] if block.notebook else [sys.executable, str(script)]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=runner_env(OPENAI_BASE_URL=fault_server.base_url, OPENAI_API_KEY="sk-docs-test"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{block.id} does not run:\n{block.text}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("block", of("yaml"))
def test_yaml_blocks_are_valid(block: Block) -> None:
    data = yaml.safe_load(block.text)
    if isinstance(data, dict) and "name" in data:
        parse_spec(block.text, block.id, data["name"])  # raises PromptSpecError naming the problem


def runner_commands(text: str) -> list[list[str]]:
    """Each ``python runner.py ...`` command of a shell block, as the argument list it passes."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        if "runner.py" not in line:
            continue
        for part in re.split(r"&&|;", line.split(" #")[0]):
            words = shlex.split(part, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value prefixes
                words.pop(0)
            if words[:2] == ["python", "runner.py"]:
                commands.append(words[2:])
    return commands


RUNNER_LINES = [
    pytest.param(argv, id=f"{b.id}:{' '.join(argv[:2])}")
    for b in ALL
    if b.lang == "bash"
    for argv in runner_commands(b.text)
]


@pytest.mark.parametrize("argv", RUNNER_LINES)
def test_cli_lines_in_the_docs_parse(argv: list[str]) -> None:
    runner.build_parser().parse_args(argv)  # a wrong flag exits 2 and fails the test
