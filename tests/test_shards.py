"""Scale-out without Ray (issue 14): ``--shard I/N`` runs, the ``merge`` command, and the ``--workers`` /
``--ray-address`` flags as they are parsed and carried.

N independent shard runs over one file, each with its own ``--output``, cover every input exactly once;
``merge`` joins their records and keeps one per key (a success over failures).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, one_error_line, records, runner_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.runnables import RunnableLambda

import runner
from chains.errors import ChainRunnerError, UsageError

TOPICS = 30
"""Topics in the shared file, plus one row that is not UTF-8 (a reader error: no key)."""


def topics_file(path: Path) -> Path:
    lines = [f"topic number {i}".encode() for i in range(TOPICS)]
    lines.insert(17, b"a bad \xff row")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def identity(record: dict[str, Any]) -> str:
    """What one input is across runs: its key, or for a bad row (no key) its index."""
    return record.get("key") or f"bad row {record['index']}"


def readable(path: Path) -> list[dict[str, Any]]:
    """The records of a file that may hold a torn line (a killed run's, kept in the middle by ``--resume``)."""
    found = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


# ------------------------------------------------------------------ --shard I/N


def test_three_shard_runs_cover_every_input_exactly_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topics = topics_file(tmp_path / "topics.txt")
    assert runner.main(["story", "--topics", str(topics), "--output", "all.jsonl", "-q"]) == 1  # the bad row fails
    whole = {identity(r): r for r in records(tmp_path / "all.jsonl")}
    assert len(whole) == TOPICS + 1
    capsys.readouterr()

    shards: list[dict[str, dict[str, Any]]] = []
    for i in range(3):
        args = ["story", "--topics", str(topics), "--shard", f"{i}/3", "--output", f"s{i}.jsonl"]
        code = runner.main([*args, "--metrics-out", f"m{i}.json"])
        err = capsys.readouterr().err
        got = {identity(r): r for r in records(tmp_path / f"s{i}.jsonl")}
        shards.append(got)
        assert code == (1 if i == 0 else 0), err  # the bad row runs in shard 0 only
        summary = json.loads((tmp_path / f"m{i}.json").read_text())
        assert summary["shard"] == {"index": i, "count": 3, "inputs": len(got), "of": TOPICS + 1}
        assert summary["items"] == len(got) and summary["skipped"] == summary["not_run"] == 0
        assert f"shard {i}/3: {len(got)} of {TOPICS + 1} inputs" in err
        assert f"{len(got)}/{len(got)}" in err  # the progress total is the shard's
        for name, record in got.items():  # the index is the input's place in the whole file, as in one run
            assert record["index"] == whole[name]["index"]

    assert all(shards)
    assert set().union(*shards) == set(whole)
    assert sum(len(s) for s in shards) == len(whole)  # pairwise disjoint
    assert "bad row 17" in shards[0]

    assert runner.main(["merge", "merged.jsonl", "s0.jsonl", "s1.jsonl", "s2.jsonl"]) == 0
    line = capsys.readouterr().err.strip()
    assert "31 records read from 3 files" in line and "31 written" in line and "0 duplicates dropped" in line
    merged = [identity(r) for r in records(tmp_path / "merged.jsonl")]
    assert sorted(merged) == sorted(whole)


def test_resume_continues_one_shard_and_never_runs_another_shards_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = topics_file(tmp_path / "topics.txt")
    args = ["story", "--topics", str(topics), "--shard", "2/3", "--output", "s.jsonl", "-q"]
    assert runner.main(args) == 0
    done = records(tmp_path / "s.jsonl")
    assert len(done) >= 4
    mine = {r["key"] for r in done}
    lines = (tmp_path / "s.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "s.jsonl").write_text("".join(lines[:2]) + lines[2][:25])  # killed while writing the third

    assert runner.main([*args, "--resume", "--metrics-out", "m.json"]) == 0
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["skipped"] == 2 and summary["ok"] == len(mine) - 2
    assert summary["shard"]["inputs"] == len(mine)
    after = readable(tmp_path / "s.jsonl")
    successes = [r["key"] for r in after if r.get("key") and r["error"] is None]
    assert sorted(successes) == sorted(mine)  # one success per input of the shard, none of another shard


def test_a_stopped_shard_run_counts_what_did_not_run_among_its_own_inputs(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("".join(f"topic {i}\n" for i in range(60)))
    args = ["story", "--topics", "t.txt", "--shard", "1/2", "--output", "o.jsonl", "--metrics-out", "m.json"]
    slow = ["--fake-delay", "0.005", "--max-concurrency", "2"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), *args, *slow],
        env=runner_env(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = tmp_path / "o.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(readable(out)) < 2):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    share = json.loads((tmp_path / "m.json").read_text())["shard"]
    assert share["of"] == 60 and 10 < share["inputs"] < 50
    done = len(records(out))
    stopped = re.search(r"interrupted: ([0-9,]+) of ([0-9,]+) not run(?: and ([0-9,]+) cancelled)?", stderr)
    assert stopped is not None, stderr
    not_run, total, cancelled = (int((n or "0").replace(",", "")) for n in stopped.groups())
    assert total == share["inputs"]  # the shard's inputs, never the other shard's
    assert not_run + done + cancelled == share["inputs"] and not_run > 0


async def test_run_batch_runs_only_its_shard_and_numbers_inputs_by_their_place() -> None:
    from chains.engine.execution import run_batch
    from chains.engine.resume import input_key
    from chains.engine.shard import Shard
    from chains.io.inputs import RowError

    key = input_key("digest", "fake", {})
    values: list[Any] = [{"topic": f"t{i}"} for i in range(40)]
    values.insert(5, RowError("in.txt line 6: not UTF-8 text; save the file as UTF-8"))
    chain = RunnableLambda(lambda value: value["topic"].upper())
    seen: dict[int, list[Any]] = {}
    for i in range(4):
        batch = run_batch(chain, values, key=key, shard=(i, 4))
        seen[i] = [record async for record in batch]
        assert batch.summary.to_dict()["items"] == len(seen[i])
        for record in seen[i]:
            if record.key is None:  # the bad row
                assert record.index == 5 and record.error is not None
            else:
                assert record.index == values.index(record.input) and Shard(i, 4).owns(record.key)
    assert sorted(r.index for rs in seen.values() for r in rs) == list(range(41))
    assert [r.index for r in seen[0] if r.key is None] == [5]  # a reader's error goes to shard 0 only


@pytest.mark.parametrize("shard", [(3, 3), (-1, 2), (0, 0), (1.0, 2), (True, 2)])
def test_run_batch_refuses_a_shard_that_is_not_one(shard: Any) -> None:
    from chains.engine.execution import run_batch
    from chains.engine.resume import input_key

    with pytest.raises(UsageError, match="shard"):
        run_batch(RunnableLambda(lambda v: v), [], key=input_key("d", "m", {}), shard=shard)


def test_run_batch_with_a_shard_needs_keys() -> None:
    from chains.engine.execution import run_batch

    with pytest.raises(UsageError, match="key"):
        run_batch(RunnableLambda(lambda v: v), [], shard=(0, 2))


def test_the_shard_of_a_key_is_a_stable_hash_spread_evenly() -> None:
    from chains.engine.shard import shard_of

    assert shard_of("abc", 7) == 2  # the first 8 bytes of sha256("abc"), big-endian, mod 7: same in any process
    assert shard_of("0123456789abcdef0123456789abcdef", 3) == 1
    counts = [0, 0, 0]
    for n in range(3000):
        counts[shard_of(f"{n:032x}", 3)] += 1
    assert all(900 < c < 1100 for c in counts), counts


@pytest.mark.parametrize("value", ["3/3", "-1/2", "1/0", "0/0", "x", "1", "1/2/3", "", "٣/4", "1 /3", "2/" + "9" * 40])
def test_a_bad_shard_is_one_usage_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    topics_file(tmp_path / "t.txt")
    assert runner.main(["story", "--topics", "t.txt", f"--shard={value}", "--output", "o.jsonl"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "argument --shard: " in line and "I/N" in line
    assert not (tmp_path / "o.jsonl").exists()


def test_a_shard_of_a_dry_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topics_file(tmp_path / "t.txt")
    assert runner.main(["story", "--topics", "t.txt", "--shard", "0/2", "--dry-run"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--shard" in line and "--dry-run" in line and "unrecognized" not in line


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.from_regex(r"\A-?[0-9]{1,12}/-?[0-9]{1,12}\Z"))
def test_parse_shard_gives_a_shard_or_one_usage_error(text: str) -> None:
    from chains.engine.shard import parse_shard

    try:
        shard = parse_shard(text)
    except UsageError as exc:
        assert "\n" not in str(exc) and "--shard" in str(exc)
    else:
        assert 0 <= shard.index < shard.count
        assert (shard.index, shard.count) == tuple(int(part) for part in text.split("/"))


# ------------------------------------------------------------------ merge


def rec(index: int, key: str | None, ok: bool, tag: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "index": index,
        "input": {"topic": tag},
        "output": tag if ok else None,
        "error": None if ok else {"type": "ProviderError", "message": f"{tag} failed"},
        "metrics": {"latency_s": 0.1},
    }
    if key is not None:
        record["key"] = key
    return record


def jsonl(path: Path, rows: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


def test_merge_keeps_one_record_per_key_a_success_over_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a1, b1, c1, k1 = (
        rec(0, "A", False, "a1"),
        rec(1, "B", True, "b1"),
        rec(2, "C", False, "c1"),
        rec(3, None, True, "k1"),
    )
    a2, c2 = rec(0, "A", True, "a2"), rec(2, "C", False, "c2")
    a3, b3, k2 = rec(0, "A", False, "a3"), rec(1, "B", True, "b3"), rec(7, None, False, "k2")
    jsonl(tmp_path / "f1.jsonl", [a1, b1, c1, k1])
    jsonl(tmp_path / "f2.jsonl", [a2, c2])
    jsonl(tmp_path / "f3.jsonl", [a3, b3, k2], tail='{"index": 9, "inp')  # the torn last line of a killed run

    assert runner.main(["merge", "out.jsonl", "f1.jsonl", "f2.jsonl", "f3.jsonl"]) == 0
    line = one_summary_line(capsys.readouterr().err)
    # A: the success wins over both failures; B: the latest success; C: the latest failure; no key: all kept
    assert records(tmp_path / "out.jsonl") == [k1, a2, c2, b3, k2]  # indexes kept, in the order they were read
    assert "9 records read from 3 files" in line
    assert "5 written to out.jsonl" in line
    assert "4 duplicates dropped" in line
    assert "2 failures kept" in line
    assert "1 unreadable line skipped (f3.jsonl line 4)" in line


def one_summary_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_merge_of_one_file_dedupes_a_resumed_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jsonl(tmp_path / "run.jsonl", [rec(0, "A", False, "x"), rec(1, "B", True, "y"), rec(0, "A", True, "z")])
    assert runner.main(["merge", "out.jsonl", "run.jsonl", "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert [r["output"] for r in records(tmp_path / "out.jsonl")] == ["y", "z"]


def _bad_merge_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    jsonl(tmp / "good.jsonl", [rec(0, "A", True, "a")])
    (tmp / "binary.jsonl").write_bytes(b'{"index": 0}\n\x00\x01\x02')
    (tmp / "prose.txt").write_text("hello\nworld\nnot records at all\n")
    (tmp / "adir").mkdir()
    os.symlink(tmp / "good.jsonl", tmp / "link.jsonl")
    return {
        "out is an input": (["good.jsonl", "good.jsonl"], "is one of the inputs"),
        "out is a link to an input": (["link.jsonl", "good.jsonl"], "is one of the inputs"),
        "missing input": (["out.jsonl", "good.jsonl", "nope.jsonl"], "no such file"),
        "directory": (["out.jsonl", "adir"], "directory"),
        "binary": (["out.jsonl", "binary.jsonl"], "not a text file"),
        "twice": (["out.jsonl", "good.jsonl", "./good.jsonl"], "given twice"),
        "no records": (["out.jsonl", "good.jsonl", "prose.txt"], "no records"),
        "stdin": (["out.jsonl", "-"], "file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "out is an input",
        "out is a link to an input",
        "missing input",
        "directory",
        "binary",
        "twice",
        "no records",
        "stdin",
    ],
)
def test_merge_refuses_bad_files_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    args, says = _bad_merge_cases(tmp_path)[case]
    before = (tmp_path / "good.jsonl").read_bytes()
    assert runner.main(["merge", *args]) == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "good.jsonl").read_bytes() == before
    assert not (tmp_path / "out.jsonl").exists()


def test_merge_refuses_an_out_that_holds_records_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl(tmp_path / "in.jsonl", [rec(0, "A", True, "new")])
    jsonl(tmp_path / "out.jsonl", [rec(0, "Z", True, "old"), rec(1, "Y", True, "old")])
    before = (tmp_path / "out.jsonl").read_bytes()
    assert runner.main(["merge", "out.jsonl", "in.jsonl"]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "out.jsonl").read_bytes() == before

    assert runner.main(["merge", "out.jsonl", "in.jsonl", "--overwrite", "-q"]) == 0
    assert [r["output"] for r in records(tmp_path / "out.jsonl")] == ["new"]

    (tmp_path / "empty.jsonl").write_text("")  # a shard that had no inputs: nothing to write, old records still go
    assert runner.main(["merge", "out.jsonl", "empty.jsonl", "--overwrite", "-q"]) == 0
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_merge_refuses_an_input_a_run_is_still_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from chains.io.sinks import JsonlSink

    jsonl(tmp_path / "done.jsonl", [rec(0, "A", True, "a")])
    with JsonlSink(tmp_path / "running.jsonl"):  # what a run holds on its --output until it ends
        assert runner.main(["merge", "out.jsonl", "done.jsonl", "running.jsonl"]) == 2
    assert "in use by a run" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out.jsonl").exists()


_LINE = st.one_of(
    st.text(max_size=30),
    st.builds(json.dumps, st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5), st.lists)),
    st.builds(
        lambda key, error: json.dumps({"index": 0, "key": key, "error": error}),
        st.none() | st.text(max_size=4) | st.integers(),
        st.none() | st.text(max_size=4) | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    ),
    st.just("[" * 5000 + "]" * 5000),
    st.just('{"key": "k", "error": null, "deep": ' + "[" * 3000 + "]" * 3000 + "}"),
)
_FILE = st.one_of(
    st.binary(max_size=200),
    st.lists(_LINE, max_size=8).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_FILE, min_size=1, max_size=3))
def test_merge_of_any_files_gives_records_or_one_usage_error(tmp_path: Path, files: list[bytes]) -> None:
    from chains.io.merge import merge_records

    folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    paths = []
    for n, content in enumerate(files):
        (folder / f"in{n}.jsonl").write_bytes(content)
        paths.append(str(folder / f"in{n}.jsonl"))
    try:
        report = merge_records(str(folder / "out.jsonl"), paths, max_line_chars=4096)
    except ChainRunnerError as exc:
        assert "\n" not in str(exc)
        return
    written = (folder / "out.jsonl").read_text(encoding="utf-8").split("\n")[:-1]  # not splitlines: U+2028
    assert len(written) == report.written == report.read - report.duplicates
    assert all(isinstance(json.loads(line), dict) for line in written)


_RECORD = st.tuples(st.sampled_from(["A", "B", "C", None]), st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_RECORD, max_size=6), min_size=1, max_size=4))
def test_merge_keeps_the_latest_success_else_the_latest_failure(
    tmp_path: Path, files: list[list[tuple[str | None, bool]]]
) -> None:
    from chains.io.merge import merge_records

    folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    everything, paths = [], []
    for n, rows in enumerate(files):
        made = [rec(len(everything) + i, key, ok, f"{n}.{i}") for i, (key, ok) in enumerate(rows)]
        everything += made
        paths.append(str(jsonl(folder / f"in{n}.jsonl", made)))
    winners = {}
    for record in everything:  # the rule, spelled out: a success replaces anything, a failure only a failure
        if "key" in record and (record["error"] is None or winners.get(record["key"], record)["error"] is not None):
            winners[record["key"]] = record
    expected = [r for r in everything if "key" not in r or winners[r["key"]] is r]
    report = merge_records(str(folder / "out.jsonl"), paths)
    assert records(folder / "out.jsonl") == expected
    assert report.duplicates == len(everything) - len(expected)
    assert report.failures == sum(r["error"] is not None for r in expected)


# ------------------------------------------------------------------ --workers, --ray-address


def test_the_scale_out_flags_are_parsed_into_the_run_options(tmp_path: Path) -> None:
    for command in (["story", "--topics", "t.txt"], ["run", "summarize", "--input", "t.txt"]):
        args = runner.build_parser().parse_args([*command, "--workers", "3", "--ray-address", "ray://head:10001"])
        options = runner.run_options(args, "runner.py")
        assert (options.workers, options.ray_address) == (3, "ray://head:10001")
        plain = runner.run_options(runner.build_parser().parse_args(command), "runner.py")
        assert (plain.workers, plain.ray_address) == (None, None)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--workers", "0"], "--workers"),
        (["--workers", "two"], "--workers"),
        (["--ray-address", ""], "--ray-address"),
        (["--workers", "2", "--tier", "batch", "--output", "o.jsonl"], "--tier batch"),
        (["--ray-address", "auto", "--tier", "batch", "--output", "o.jsonl"], "--tier batch"),
    ],
)
def test_bad_scale_out_flags_are_one_usage_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], says: str
) -> None:
    topics_file(tmp_path / "t.txt")
    assert runner.main(["story", "--topics", "t.txt", *flags]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert says in line and "unrecognized" not in line
    assert not (tmp_path / "o.jsonl").exists()


def test_without_the_flags_a_run_never_imports_the_ray_engine(tmp_path: Path) -> None:
    topics_file(tmp_path / "t.txt")
    script = (
        "import sys, runner\n"
        "code = runner.main(['story', '--topics', 't.txt', '--output', 'o.jsonl', '-q'])\n"
        "print(code, sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'chains.scale'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=runner_env(), capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split(" ", 1) == ["1", "[]\n"], result.stderr
    assert len(records(tmp_path / "o.jsonl")) == TOPICS + 1
    assert result.stderr.strip() == ""
