"""Running the request scenarios (1-4): each contender against the mock server, in alternation.

Each measured process is ``project_cli`` alone, or in-process contenders (``contenders.py``);
around it the server's counters check that exactly N requests were seen, and every answer is
checked to be its own input's echo.
"""

from __future__ import annotations

import json
from typing import Any

import contenders as C
from processes import HERE, RUNNER, MockServer, run_process
from scenarios import Throughput, medians_of
from suite import Suite


def run_throughput(suite: Suite, server: MockServer, sc: Throughput) -> None:
    suite.log(f"\n[{sc.number}] {sc.title}" + (" (quick sizes)" if suite.quick else ""))
    server.configure(**sc.server)
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in sc.contenders}
    for rep in range(suite.repeat):
        shift = rep % len(sc.contenders)
        order = sc.contenders[shift:] + sc.contenders[:shift]
        if suite.quick:  # the in-process contenders share one process: seconds, not minutes
            groups = [
                [c for c in order if c != "project_cli"],
                *([["project_cli"]] if "project_cli" in order else []),
            ]
        else:
            groups = [[c] for c in order]
        for group in groups:
            for name, sample in run_group(suite, server, sc, group).items():
                samples[name].append(sample)
                suite.log(
                    f"  rep {rep + 1}/{suite.repeat} {name:<12} wall {sample.get('wall_s', float('nan')):7.2f} s"
                    f"  cpu {sample.get('cpu_s', float('nan')):7.2f} s  ok {sample.get('ok', 0)}/{sc.n}"
                    f"  server peak {sample.get('server_peak_in_flight')}"
                )
    medians = {name: medians_of(s) for name, s in samples.items() if s}
    raw = medians.get("raw", {})
    for values in medians.values():
        for metric in ("wall_s", "cpu_ms_per_req", "chunks_per_cpu_s"):
            if raw.get(metric) and values.get(metric) is not None:
                values[f"{metric}_x_raw"] = values[metric] / raw[metric]
    suite.results[sc.key] = {
        "number": sc.number,
        "title": sc.title,
        "target": sc.target,
        "n": sc.n,
        "concurrency": sc.concurrency,
        "stream": sc.stream,
        "server_settings": sc.server,
        "samples": samples,
        "medians": medians,
        "targets": sc.judge(medians),
    }


def run_group(suite: Suite, server: MockServer, sc: Throughput, names: list[str]) -> dict[str, dict[str, Any]]:
    """One measured process: ``project_cli`` alone, or in-process contenders (one each,
    or several one after the other in ``--quick``), with the server's counters around it."""
    server.reset_stats()
    cpu_before = server.cpu_s()
    if names == ["project_cli"]:
        samples = {"project_cli": cli_sample(suite, server, sc)}
    else:
        samples = child_samples(suite, server, sc, names)
    stats = server.stats()
    server_cpu = server.cpu_s() - cpu_before
    expected = sc.n * len(names)
    if stats["requests"] != expected:
        suite.fail(
            f"[{sc.number}] {'+'.join(names)}: the server saw {stats['requests']} chat requests, expected {expected}"
        )
    if stats["peak_in_flight"] > sc.concurrency:
        suite.log(
            f"  note: {'+'.join(names)} had {stats['peak_in_flight']} requests in flight (limit {sc.concurrency})"
        )
    for sample in samples.values():
        sample["server_requests"] = stats["requests"]
        sample["server_peak_in_flight"] = stats["peak_in_flight"]
        if len(names) == 1:
            sample["server_cpu_s"] = server_cpu
            if sample.get("wall_s"):
                sample["server_busy"] = server_cpu / sample["wall_s"]
        if sample.get("wall_s"):
            sample["req_per_s"] = sample.get("ok", 0) / sample["wall_s"]
        if sample.get("cpu_s"):
            sample["cpu_ms_per_req"] = 1000.0 * sample["cpu_s"] / sc.n
            if sc.stream and sample.get("chunks"):
                sample["chunks_per_cpu_s"] = sample["chunks"] / sample["cpu_s"]
    return samples


def child_samples(suite: Suite, server: MockServer, sc: Throughput, names: list[str]) -> dict[str, dict[str, Any]]:
    jobs = [
        {
            "contender": name,
            "url": server.url,
            "n": sc.n,
            "concurrency": sc.concurrency,
            "stream": sc.stream,
            "chunks": sc.chunks,
        }
        for name in names
    ]
    spec = json.dumps(jobs[0] if len(jobs) == 1 else jobs)
    proc = run_process(
        suite.python(str(HERE / "contenders.py"), spec),
        env=suite.env,
        timeout=suite.timeout,
        stdout_path=suite.work / "child-stdout.txt",
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            child = json.loads(line[len("RESULT ") :])
            results[child["contender"]] = child
    samples: dict[str, dict[str, Any]] = {}
    for name in names:
        sample: dict[str, Any] = {
            "process_wall_s": proc.wall_s,
            "process_cpu_s": proc.cpu_s,
            "maxrss_mb": proc.maxrss_mb,
        }
        child = results.get(name)
        if child is None:
            why = "timed out" if proc.timed_out else f"exited {proc.returncode}"
            suite.fail(f"[{sc.number}] {name} {why} without a result: {proc.stderr.strip()[-800:]}")
            continue
        sample.update({k: child[k] for k in ("wall_s", "cpu_s", "setup_s", "ok", "bad", "errors", "chunks")})
        if len(names) > 1:
            sample["maxrss_mb"] = child["maxrss_mb"]  # the process's peak so far
        check_answers(
            suite,
            sc,
            name,
            child.get("ok", 0),
            child.get("errors", 0),
            child.get("bad", 0),
            child.get("first_error") or "; ".join(child.get("bad_samples") or []),
        )
        samples[name] = sample
    if proc.returncode != 0 and len(results) == len(names):
        suite.fail(f"[{sc.number}] {'+'.join(names)} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return samples


def check_answers(suite: Suite, sc: Throughput, name: str, ok: int, errors: int, bad: int, detail: str) -> None:
    if ok != sc.n:
        suite.fail(f"[{sc.number}] {name}: {ok}/{sc.n} correct answers ({errors} errors, {bad} wrong): {detail}")


def cli_sample(suite: Suite, server: MockServer, sc: Throughput) -> dict[str, Any]:
    inputs = suite.work / f"inputs-{sc.n}.txt"
    inputs.write_text("".join(f"item {i}\n" for i in range(sc.n)))
    output = suite.work / "cli-out.jsonl"
    output.unlink(missing_ok=True)
    argv = suite.python(
        str(RUNNER),
        "run",
        "echo",
        "--input",
        str(inputs),
        "--prompts-dir",
        str(HERE / "prompts"),
        "--base-url",
        server.url,
        "--model",
        f"openai:{C.MODEL}",
        "--max-concurrency",
        str(sc.concurrency),
        "--output",
        str(output),
        "--overwrite",
        "-q",
        "--stream" if sc.stream else "--no-stream",
    )
    proc = run_process(argv, env=suite.env, timeout=suite.timeout)
    sample: dict[str, Any] = {
        "wall_s": proc.wall_s,
        "cpu_s": proc.cpu_s,
        "process_wall_s": proc.wall_s,
        "process_cpu_s": proc.cpu_s,
        "maxrss_mb": proc.maxrss_mb,
    }
    ok = errors = bad = 0
    detail = ""
    if output.exists():
        for line in output.read_text().splitlines():
            record = json.loads(line)
            if record.get("error"):
                errors += 1
                detail = detail or json.dumps(record["error"])[:300]
            elif isinstance(record.get("output"), str) and record["output"].startswith(
                f"echo: {record['input']['text']}"
            ):
                ok += 1
            else:
                bad += 1
    if proc.returncode != 0 and not detail:
        detail = (
            f"exit {proc.returncode}" + (" (timed out)" if proc.timed_out else "") + f": {proc.stderr.strip()[-800:]}"
        )
    sample.update({"ok": ok, "errors": errors, "bad": bad, "chunks": ok * sc.chunks if sc.stream else 0})
    check_answers(suite, sc, "project_cli", ok, errors, bad, detail)
    return sample


# -- memory
