"""A real user's first hour with the CLI (issue 10): the details they meet before anything else.

Its version and its own name; Ctrl-C part-way through a batch (what ran, what did not, and
``--resume`` for the rest); a local server (which model is asked for, and no cost made up from
OpenAI's prices); ``| head``; and a missing extra.  Each runs the real CLI in a subprocess.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, cli, one_error_line, records, runner_env
from fault_server import FaultServer
from hypothesis import given, settings
from hypothesis import strategies as st

import chains
from chains.engine.pricing import PriceTable
from chains.errors import ChainRunnerError, UsageError

RUNNER = str(ROOT / "runner.py")
CONSOLE_SCRIPT = Path(sys.executable).parent / "chain-runner"


# ----------------------------------------------------------------------------- 1. version and name


def test_version_flag_prints_the_installed_version_under_the_name_it_was_called_by(tmp_path: Path) -> None:
    installed = importlib.metadata.version("chain-runner")
    result = cli("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"runner.py {installed}\n", "")
    assert CONSOLE_SCRIPT.exists(), "the venv has no chain-runner script: install the project (pip install -e .)"
    script = subprocess.run([str(CONSOLE_SCRIPT), "--version"], capture_output=True, text=True, env=runner_env())
    assert (script.returncode, script.stdout, script.stderr) == (0, f"chain-runner {installed}\n", "")


def test_chains_version_is_the_installed_package_version() -> None:
    assert chains.__version__ == importlib.metadata.version("chain-runner")
    assert "__version__" in chains.__all__


def test_a_checkout_that_is_not_installed_takes_the_version_from_pyproject(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "chains", checkout / "chains", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "runner.py", checkout / "runner.py")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (checkout / "pyproject.toml").write_text(re.sub(r'(?m)^version = ".*"$', 'version = "9.8.7"', pyproject))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -S: no site-packages, so no installed chain-runner (nor its metadata) can be found.
    probe = [sys.executable, "-S", "-c", "import chains; print(chains.__version__)"]
    assert subprocess.run(probe, cwd=checkout, env=env, capture_output=True, text=True).stdout == "9.8.7\n"
    flag = subprocess.run(
        [sys.executable, "-S", "runner.py", "--version"], cwd=checkout, env=env, capture_output=True, text=True
    )
    assert (flag.returncode, flag.stdout) == (0, "runner.py 9.8.7\n"), flag.stderr


def test_usage_and_error_lines_name_the_program_it_was_called_by(tmp_path: Path) -> None:
    script = subprocess.run(
        [str(CONSOLE_SCRIPT), "story"], capture_output=True, text=True, env=runner_env(), cwd=tmp_path
    )
    assert script.returncode == 2
    assert "chain-runner story --help" in one_error_line(script.stderr)
    assert "runner.py" not in script.stderr
    helped = subprocess.run([str(CONSOLE_SCRIPT), "--help"], capture_output=True, text=True, env=runner_env())
    assert helped.stdout.startswith("usage: chain-runner ") and "runner.py" not in helped.stdout
    direct = cli("story", cwd=tmp_path)
    assert direct.returncode == 2 and "runner.py story --help" in one_error_line(direct.stderr)


# ----------------------------------------------------------------------------- 2. Ctrl-C / SIGTERM

N_TOPICS = 200
SLOW = ["--model", "fake", "--fake-delay", "0.02", "--max-concurrency", "4"]
_ROW = re.compile(r"^│\s*(?P<name>[a-z /()-]+?)\s*│\s*(?P<value>.+?)\s*│$")


def write_topics(tmp_path: Path) -> list[str]:
    topics = [f"topic number {i}" for i in range(N_TOPICS)]
    (tmp_path / "topics.txt").write_text("".join(f"{t}\n" for t in topics), encoding="utf-8")
    return topics


def wait_for_records(path: Path, at_least: int, process: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= at_least:
            return
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError(f"no {at_least} records in {path} after {timeout} s")


def summary_rows(stderr: str) -> dict[str, str]:
    return {m["name"]: m["value"] for m in map(_ROW.match, stderr.splitlines()) if m}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_batch_says_what_did_not_run_and_resume_finishes_it(tmp_path: Path, sig: signal.Signals) -> None:
    topics = write_topics(tmp_path)
    args = [RUNNER, "story", "--topics", "topics.txt", *SLOW, "--output", "out.jsonl", "--metrics-out", "m.json"]
    run = subprocess.Popen(
        [sys.executable, *args],
        cwd=tmp_path,
        env=runner_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_records(tmp_path / "out.jsonl", 3, run)
        time.sleep(0.3)  # the next inputs are mid-way now
        run.send_signal(sig)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    kept = records(tmp_path / "out.jsonl")
    assert len(kept) >= 3 and all(r["error"] is None for r in kept), stderr  # nothing failed; no half-done record
    # The one line that says what did not run; with the records in the file it is every input.
    [line] = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    match = re.fullmatch(r"interrupted: (\d+) of 200 not run and (\d+) cancelled mid-way; (.*)", line)
    assert match, line
    not_run, cancelled = int(match[1]), int(match[2])
    assert cancelled >= 1  # four inputs were in flight when the signal came
    assert len(kept) + not_run + cancelled == N_TOPICS
    assert "rerun with --resume" in match[3] and "out.jsonl" in match[3]
    # The summary counts what the file holds and the cancelled inputs (what they spent included).
    rows = summary_rows(stderr)
    assert rows["items ok / failed"] == f"{len(kept)} / 0" and rows["cancelled"] == str(cancelled), stderr
    summary = json.loads((tmp_path / "m.json").read_text())
    assert (summary["ok"], summary["cancelled"], summary["failed"]) == (len(kept), cancelled, 0)
    assert summary["output_tokens"] >= sum(r["metrics"]["output_tokens"] for r in kept)
    # The progress line is printed once, with the final count.
    progress = [line for line in stderr.splitlines() if line.startswith("story ") and "/200" in line]
    assert len(progress) == 1, stderr
    assert f"{len(kept) + cancelled}/200" in progress[0], progress
    # --resume runs exactly the inputs the line said did not run (the fake model's speed is not part of the key).
    resumed = cli(
        *["story", "--topics", "topics.txt", "--model", "fake", "--output", "out.jsonl", "--resume", "-q"],
        *["--metrics-out", "m2.json"],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((tmp_path / "m2.json").read_text())
    assert (again["skipped"], again["ok"]) == (len(kept), not_run + cancelled)
    done = [r["input"]["topic"] for r in records(tmp_path / "out.jsonl") if r["error"] is None]
    assert sorted(done) == sorted(topics)


def test_an_interrupted_batch_without_output_says_no_records_were_kept(tmp_path: Path) -> None:
    write_topics(tmp_path)
    run = subprocess.Popen(
        [sys.executable, RUNNER, "story", "--topics", "topics.txt", *SLOW],
        cwd=tmp_path,
        env=runner_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stdout is not None and run.stderr is not None
    chunks: list[str] = []
    reader = threading.Thread(target=chunks.extend, args=(run.stdout,), daemon=True)  # every line, as it comes
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not chunks and time.monotonic() < deadline:  # the first output on stdout: the run is under way
            time.sleep(0.01)
        run.send_signal(signal.SIGINT)
        run.wait(timeout=60)
        reader.join(timeout=10)
        stderr = run.stderr.read()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        run.stdout.close()
        run.stderr.close()
    stdout = "".join(chunks)
    assert stdout.startswith("── ["), stdout[:200]
    assert run.returncode == 130, stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    shown = stdout.count("── [")
    match = re.match(r"interrupted: (\d+) of 200 not run and (\d+) cancelled mid-way; (.*)", line)
    assert match and int(match[1]) + int(match[2]) + shown == N_TOPICS, line
    assert "no records were kept" in match[3] and "--output" in match[3], line


class Screen:
    """Just enough of a terminal to see what the user sees: lines, wrapping, CR, erase line, cursor up."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0

    def feed(self, text: str) -> list[str]:
        i = 0
        while i < len(text):
            csi = re.match(r"\x1b\[([0-9;?]*)([A-Za-z])", text[i:])
            if csi:
                self._control(csi[1], csi[2])
                i += len(csi[0])
                continue
            char = text[i]
            if char == "\r":
                self.col = 0
            elif char == "\n":
                self._down()
            elif char >= " ":
                self._put(char)
            i += 1
        return ["".join(row).rstrip() for row in self.rows]

    def _down(self) -> None:
        self.row += 1
        while len(self.rows) <= self.row:
            self.rows.append([])

    def _put(self, char: str) -> None:
        if self.col >= self.columns:  # the pending wrap of a full line
            self._down()
            self.col = 0
        line = self.rows[self.row]
        line.extend(" " * (self.col + 1 - len(line)))
        line[self.col] = char
        self.col += 1

    def _control(self, arg: str, command: str) -> None:
        if command == "K":
            self.rows[self.row] = [] if arg == "2" else self.rows[self.row][: self.col]
        elif command == "A":
            self.row = max(0, self.row - int(arg or 1))
        elif command == "G":
            self.col = int(arg or 1) - 1


def run_in_terminal(args: Sequence[str], cwd: Path, columns: int, ctrl_c_when: Path) -> tuple[int, str]:
    """Run ``args`` on a new pseudo-terminal, press Ctrl-C once ``ctrl_c_when`` holds a record; the screen."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in runner_env(TERM="xterm-256color").items() if k not in ("COLUMNS", "LINES")}
    # A session of its own with the terminal as its controlling terminal, as a shell would do it.
    launcher = "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.executable, sys.argv[1:])"
    process = subprocess.Popen(
        [sys.executable, "-c", launcher, sys.executable, *args],
        cwd=cwd,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    output, pressed, deadline = b"", False, time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            if not pressed and ctrl_c_when.exists() and ctrl_c_when.read_bytes().count(b"\n") >= 3:
                time.sleep(0.3)
                os.write(master, b"\x03")
                pressed = True
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's last user is gone
                    break
                if not chunk:
                    break
                output += chunk
        code = process.wait(timeout=30)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert pressed, "the run never wrote a record"
    return code, "\n".join(Screen(columns).feed(output.decode("utf-8", "replace")))


def test_ctrl_c_in_a_terminal_leaves_one_progress_line(tmp_path: Path) -> None:
    write_topics(tmp_path)
    args = [RUNNER, "story", "--topics", "topics.txt", *SLOW, "--output", "out.jsonl"]
    code, screen = run_in_terminal(args, tmp_path, 80, tmp_path / "out.jsonl")
    assert code == 130, screen
    progress = [line for line in screen.splitlines() if "/200" in line]
    assert len(progress) == 1, screen
    assert "^C" not in screen and "interrupted: " in screen, screen


# ----------------------------------------------------------------------------- 3. a local server


def story_on(server: FaultServer, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "topics.txt").write_text("a brave snail\na shy comet\n", encoding="utf-8")
    args = ["story", "--topics", "topics.txt", "--base-url", server.base_url, "--output", "out.jsonl"]
    return cli(*args, "--metrics-out", "m.json", *extra, cwd=tmp_path)


def test_a_model_the_user_did_not_choose_is_named_in_a_notice(tmp_path: Path, fault_server: FaultServer) -> None:
    result = story_on(fault_server, tmp_path)
    assert result.returncode == 0, result.stderr
    [notice] = [line for line in result.stderr.splitlines() if "gpt-4o-mini" in line]
    assert fault_server.base_url in notice and "--model openai:NAME" in notice, notice
    assert f"GET {fault_server.base_url}/models" in notice, notice
    chosen = story_on(fault_server, tmp_path, "--model", "openai:fake-model", "--overwrite")
    assert chosen.returncode == 0 and "gpt-4o-mini" not in chosen.stderr and "--model openai:NAME" not in chosen.stderr


@pytest.mark.parametrize("model", [[], ["--model", "openai:gpt-4o-mini"]])
def test_cost_on_a_local_server_is_unknown_not_openai_prices(
    tmp_path: Path, fault_server: FaultServer, model: list[str]
) -> None:
    result = story_on(fault_server, tmp_path, *model)
    assert result.returncode == 0, result.stderr
    kept = records(tmp_path / "out.jsonl")
    assert len(kept) == 2 and all(r["metrics"]["input_tokens"] > 0 for r in kept)
    assert [r["metrics"]["cost_usd"] for r in kept] == [None, None]
    assert json.loads((tmp_path / "m.json").read_text())["cost_usd"] is None
    assert summary_rows(result.stderr)["cost"].startswith("unknown") and "$" not in result.stderr, result.stderr


def test_prices_from_a_file_apply_on_any_server(tmp_path: Path, fault_server: FaultServer) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"fake-model": {"input": 1000.0, "output": 2000.0}}))
    result = story_on(fault_server, tmp_path, "--model", "openai:fake-model", "--prices", "p.json")
    assert result.returncode == 0, result.stderr
    for record in records(tmp_path / "out.jsonl"):
        metrics = record["metrics"]
        expected = (metrics["input_tokens"] * 1000.0 + metrics["output_tokens"] * 2000.0) / 1e6
        assert metrics["cost_usd"] == pytest.approx(expected)
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["cost_usd"] > 0 and summary_rows(result.stderr)["cost"].startswith("$")


def test_max_cost_without_a_price_is_a_usage_error_before_any_request(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    result = story_on(fault_server, tmp_path, "--model", "openai:fake-model", "--max-cost", "1")
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert "--max-cost needs a price for fake-model" in line and "--prices FILE" in line, line
    assert fault_server.stats()["requests"] == 0


def test_openai_itself_keeps_the_built_in_prices_and_a_file_adds_to_them(tmp_path: Path) -> None:
    assert _pair(PriceTable.load(None).price("gpt-4o-mini-2024-07-18")) == (0.15, 0.60)
    assert PriceTable.load(None, builtin=False).price("gpt-4o-mini") is None
    (tmp_path / "p.json").write_text(json.dumps({"my-model": {"input": 1, "output": 2}}))
    elsewhere = PriceTable.load("p.json", builtin=False)
    assert _pair(elsewhere.price("my-model")) == (1.0, 2.0) and elsewhere.price("gpt-4o") is None
    assert _pair(PriceTable.load("p.json").price("gpt-4o")) == (2.50, 10.00)


def test_the_session_prices_by_endpoint(tmp_path: Path) -> None:
    from chains.providers.models import ModelSession
    from chains.settings import RunSettings

    def price(**values: Any) -> tuple[float, float] | None:
        session = ModelSession(RunSettings(api_key="k", **values))
        return _pair(session.limits.prices.price(session.spec.name))

    assert price(model="openai:gpt-4o") == (2.50, 10.00)
    assert price(model="openai:gpt-4o", base_url="https://API.openai.com:443/v1/") == (2.50, 10.00)
    assert price(model="openai:gpt-4o", base_url="http://localhost:11434/v1") is None
    assert price(model="openai:gpt-4o", base_url="https://llm.example.com/v1") is None
    assert price(model="fake") == (0.0, 0.0)
    with pytest.raises(UsageError, match="--max-cost needs a price for gpt-4o"):
        ModelSession(
            RunSettings(model="openai:gpt-4o", base_url="http://127.0.0.1:9/v1", max_cost=1.0)
        ).check_budget_priced()
    ModelSession(RunSettings(model="openai:gpt-4o", api_key="k", max_cost=1.0)).check_budget_priced()  # priced


URLS = st.text(max_size=120) | st.from_regex(
    r"(?i)https?://[^\s/?#]{0,40}(:[0-9]{0,6})?(/[^\s]{0,30})?", fullmatch=True
)


@settings(max_examples=300, deadline=None)
@given(URLS)
def test_any_base_url_gives_a_model_a_price_rule_and_at_most_a_one_line_notice(url: str) -> None:
    from chains.providers.models import builtin_prices_apply, resolve_model_spec
    from chains.settings import RunSettings

    try:
        run = RunSettings.from_env({"OPENAI_BASE_URL": url})
    except ChainRunnerError:
        return  # refused as one usage line: tested with the settings
    spec, notice = resolve_model_spec(run)
    assert isinstance(builtin_prices_apply(spec, run.base_url), bool)
    assert notice is None or "\n" not in notice
    if run.base_url and notice is not None:
        assert "--model openai:NAME" in notice, notice


# ----------------------------------------------------------------------------- 4. | head


def test_piping_into_head_exits_quietly(tmp_path: Path) -> None:
    write_topics(tmp_path)
    pipeline = f"{sys.executable} {RUNNER} story --topics topics.txt --model fake | head -3; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(
        ["bash", "-c", pipeline], cwd=tmp_path, env=runner_env(), capture_output=True, text=True, timeout=120
    )
    assert len(result.stdout.splitlines()) == 3
    assert result.returncode in (0, 141), result.stderr
    assert (
        "BrokenPipe" not in result.stderr
        and "Traceback" not in result.stderr
        and "Exception ignored" not in result.stderr
    )
    assert "error" not in result.stderr, result.stderr


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["show", "story"], ["--version"]])
def test_every_command_exits_quietly_when_stdout_is_already_closed(tmp_path: Path, args: list[str]) -> None:
    process = subprocess.Popen(
        [sys.executable, RUNNER, *args], cwd=tmp_path, env=runner_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first byte
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert (process.wait(timeout=60), stderr) == (141, "")


def test_closing_stdout_mid_stream_keeps_the_records_of_the_output_file(tmp_path: Path) -> None:
    (tmp_path / "two.txt").write_text("a shy comet\na tall tree\n", encoding="utf-8")
    assert (
        cli("story", "--topics", "two.txt", "--model", "fake", "--output", "o.jsonl", "-q", cwd=tmp_path).returncode
        == 0
    )
    before = (tmp_path / "o.jsonl").read_text(encoding="utf-8")
    (tmp_path / "one.txt").write_text("a brave snail\n", encoding="utf-8")
    command = (
        f"{sys.executable} {RUNNER} story --topics one.txt --model fake --fake-delay 0.005 --output o.jsonl --resume"
    )
    result = subprocess.run(
        ["bash", "-c", f"{command} | head -c 40; exit ${{PIPESTATUS[0]}}"],
        cwd=tmp_path,
        env=runner_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert len(result.stdout) == 40 and result.returncode in (0, 141), result.stderr
    assert "BrokenPipe" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr and "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "o.jsonl").read_text(encoding="utf-8") == before  # kept; the story cut short has no record


def test_a_closed_stdout_stops_the_run_without_touching_the_sigpipe_handler(tmp_path: Path) -> None:
    """The CLI's stdout only: ``serve`` in the same process must survive a client that hangs up."""
    write_topics(tmp_path)
    script = (
        "import signal, sys, runner; code = runner.main(['story', '--topics', 'topics.txt', '--model', 'fake', '-q']); "
        "sys.stderr.write(f'returned {code} with SIGPIPE {signal.getsignal(signal.SIGPIPE)!r}')"
    )
    command = f'{sys.executable} -c "{script}" | head -1'
    result = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=runner_env(), capture_output=True, text=True, timeout=120
    )
    assert result.stderr == "returned 141 with SIGPIPE <Handlers.SIG_IGN: 1>", result.stderr


# ----------------------------------------------------------------------------- 5. missing extras

BLOCK = """
import sys

class Missing:
    '''As if these packages were not installed.'''
    def __init__(self, *names):
        self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing(*sys.argv[1].split(",")))
sys.argv = ["runner.py", *sys.argv[2:]]
import runner
sys.exit(runner.main())
"""


def without(packages: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK, packages, *args],
        cwd=cwd,
        env=runner_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_without_the_server_extra_is_one_line(tmp_path: Path) -> None:
    result = without("fastapi,uvicorn,sse_starlette,prometheus_client", "serve", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result.stderr) == "error: serve needs the server extra: pip install 'chain-runner[server]'"


def test_another_provider_without_the_providers_extra_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("a\n")
    result = without("langchain", "story", "--topics", "t.txt", "--model", "mistralai:mistral-small", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert "--model mistralai:mistral-small" in line, line
    assert "pip install 'chain-runner[providers]' langchain-mistralai" in line, line


def test_anthropic_without_its_extra_is_one_line(tmp_path: Path) -> None:
    """Anthropic's models are first class (their own extra), not through init_chat_model."""
    (tmp_path / "t.txt").write_text("a\n")
    result = without(
        "langchain_anthropic", "story", "--topics", "t.txt", "--model", "anthropic:claude-haiku-4-5", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert "needs langchain-anthropic" in line and "pip install 'chain-runner[anthropic]'" in line, line


def _pair(price: Any) -> tuple[float, float] | None:
    """A model's online (input, output) price, or None when it has none."""
    return None if price is None else price.pair
