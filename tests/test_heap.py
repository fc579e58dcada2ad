"""The long-lived heap is frozen out of the collector's walks only in a process that is chain-runner's own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = textwrap.dedent(
    """
    import gc, sys
    from chains.engine.heap import HeapFreeze, claim_process
    if sys.argv[1] == "ours":
        claim_process()
    heap = HeapFreeze(after=3)
    counts = []
    heap.start()
    counts.append(gc.get_freeze_count())
    keep = []
    for _ in range(3):
        keep.append([[] for _ in range(100)])  # what the first inputs build up and keep
        heap.count()
        counts.append(gc.get_freeze_count())
    print(counts)
    """
)


def _freeze_counts(mode: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return [int(n) for n in out.stdout.strip().strip("[]").split(",")]


def test_a_process_that_is_ours_freezes_at_the_start_and_after_the_first_records() -> None:
    counts = _freeze_counts("ours")
    assert counts[0] > 1_000, "the start freezes what the process has built (its modules: thousands of objects)"
    assert counts[1] == counts[2] == counts[0], "nothing more until the 3rd record"
    assert counts[3] >= counts[0] + 300, "the 3rd record freezes what the first ones kept"


def test_a_process_that_is_not_ours_is_never_frozen() -> None:
    """A test, a notebook or a server calling the library (or the CLI's ``main``) keeps its heap as it was."""
    assert _freeze_counts("library") == [0, 0, 0, 0]


def test_the_program_claims_its_process() -> None:
    """``python runner.py`` and the console script enter through ``main_entry``, which claims the process before
    the command runs; importing ``runner`` (a test, a notebook) claims nothing."""
    probe = (
        "import runner, chains.engine.heap as h; print(h._OURS);"
        "runner.main = lambda prog: print(h._OURS) or 0; runner.main_entry('runner.py')"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.split()) == (0, ["False", "True"])
