"""Scenario 7's correctness checks: every record right, and the mock server's books as a provider would bill them.

A faster batch run that loses a record, answers the wrong input, or submits a request twice is not
faster, it is wrong; so the numbers only count when these checks found nothing.  Pure functions of
the records file and the server's ``/_control/stats``; nothing here runs a process.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = 2
"""``story`` is a two-step chain (outline, then story): two model requests per input."""


def topic_line(i: int) -> str:
    """The topic of input ``i``; every one is different, so every answer names its own input."""
    animals = ("fox", "snail", "comet", "teacup", "lighthouse", "owl", "whale", "kite")
    return f"a {animals[i % len(animals)]} who collects thing number {i}"


def story_is_right(topic: str, output: Any) -> bool:
    """The echo server's story for ``topic``: it starts with the topic, and the outline it was written
    from (the first step's answer, inside the second step's prompt) names the topic too."""
    return isinstance(output, str) and output.startswith(f"echo: Topic: {topic}\n") and output.count(f"{topic}\n") >= 2


@dataclass
class RecordCheck:
    """What one run's ``--output`` held."""

    records: int = 0
    ok: int = 0
    errors: int = 0
    wrong: int = 0
    first_problem: str = ""
    digests: dict[int, str] = field(default_factory=dict)
    """index → digest of its output, so two runs' answers can be compared without keeping them."""

    def problem(self, text: str) -> None:
        self.first_problem = self.first_problem or text[:300]


def check_records(path: Path, n: int, tier: str) -> RecordCheck:
    """Every input once, answered right, at ``tier`` (each record's ``metrics.tier``)."""
    check = RecordCheck()
    if not path.exists():
        check.problem(f"{path.name} was not written")
        return check
    with path.open() as handle:
        for line in handle:
            check.records += 1
            record = json.loads(line)
            index = record.get("index")
            if not isinstance(index, int) or not 0 <= index < n or index in check.digests:
                check.wrong += 1
                check.problem(f"record with index {index!r}: unknown or repeated")
                continue
            if record.get("error"):
                check.errors += 1
                check.problem(f"input {index}: {json.dumps(record['error'])}")
            elif not story_is_right(topic_line(index), record.get("output")):
                check.wrong += 1
                check.problem(f"input {index}: not its own story: {str(record.get('output'))[:120]!r}")
            elif (record.get("metrics") or {}).get("tier") != tier:
                check.wrong += 1
                check.problem(f"input {index}: metrics.tier {(record.get('metrics') or {}).get('tier')!r}, not {tier}")
            else:
                check.ok += 1
            check.digests[index] = hashlib.sha1(str(record.get("output")).encode()).hexdigest()
    return check


def differing_answers(a: dict[int, str], b: dict[int, str]) -> list[int]:
    """The inputs whose answers differ between two runs (batch and online must give the same records)."""
    return sorted(i for i in a.keys() & b.keys() if a[i] != b[i])


def input_files(books: dict[str, Any]) -> list[int]:
    """Requests in each batch input file the client uploaded (output and error files left out)."""
    return [f["rows"] for f in books["batches"]["files"] if f.get("purpose") == "batch"]


def book_problems(books: dict[str, Any], n: int, tier: str) -> list[str]:
    """What the server saw that a provider would bill wrongly: requests missing, sent twice, or sent the
    other way (online requests in a batch run, batches in an online run)."""
    batches = books["batches"]
    submissions: dict[str, int] = batches["submissions"]
    answers: dict[str, int] = batches["answers"]
    expected = STAGES * n
    problems = []
    if tier == "batch":
        twice = sum(1 for times in submissions.values() if times != 1)
        answered_twice = sum(1 for times in answers.values() if times != 1)
        if len(submissions) != expected or twice:
            problems.append(f"{len(submissions)} custom_ids submitted (expected {expected}), {twice} more than once")
        if len(answers) != expected or answered_twice:
            problems.append(f"{len(answers)} rows answered (expected {expected}), {answered_twice} more than once")
        if books["requests"]:
            problems.append(f"{books['requests']} online chat requests in a batch run")
    else:
        if books["requests"] != expected:
            problems.append(f"{books['requests']} chat requests (expected {expected})")
        if batches["created"]:
            problems.append(f"{len(batches['created'])} batches created in an online run")
    return problems


def summary_problems(summary: dict[str, Any], books: dict[str, Any], n: int) -> list[str]:
    """The run's own account (``--metrics-out`` ``batches``) against the server's: the same batches and requests,
    nothing resubmitted or failed on a server with no faults."""
    mine = summary.get("batches") or {}
    created = len(books["batches"]["created"])
    problems = []
    if mine.get("batches") != created:
        problems.append(f"the summary counts {mine.get('batches')} batches, the server created {created}")
    if mine.get("requests") != STAGES * n:
        problems.append(f"the summary counts {mine.get('requests')} requests (expected {STAGES * n})")
    if mine.get("resubmitted") or mine.get("failed_rows"):
        problems.append(f"{mine.get('resubmitted')} resubmitted, {mine.get('failed_rows')} failed rows without faults")
    return problems
