"""The run's long-lived heap, kept out of the garbage collector's walks (``gc.freeze``).

A run holds a large heap for its whole life (LangChain, pydantic's schemas, the chain, the HTTP pools: about
150,000 objects), and each model call allocates many small containers, so Python's cyclic collector keeps
walking that heap: in a Ray worker, ``story`` on the offline model, 0.65 of 2.2 ms of CPU per input.
``gc.freeze()`` once the chain is built, and again after the first inputs (whose caches also live for the run),
moves it to the permanent generation: later collections walk only what the inputs in flight allocate.  The price:
cyclic garbage alive at those two moments is never collected (a few MB, once).

A process-wide act, so only a process that is ours does it: ``claim_process()`` says so (``runner.py`` run as a
program, a Ray worker); the library, the CLI's ``main`` called in someone's process (a test, a notebook) and the
server never freeze a heap that is not theirs.
"""

from __future__ import annotations

import gc

FREEZE_AFTER = 64
"""Records after which what the run has built up so far is frozen too."""


_OURS = False


def claim_process() -> None:
    """This process is ours alone (its program is chain-runner's): the runs in it may freeze its heap."""
    global _OURS
    _OURS = True


class HeapFreeze:
    """``start()`` once the chain is built; ``count()`` per record (freezes again at ``after``)."""

    def __init__(self, after: int = FREEZE_AFTER) -> None:
        self.after = after
        self.seen = 0

    def start(self) -> None:
        if _OURS:
            gc.freeze()

    def count(self) -> None:
        self.seen += 1
        if self.seen == self.after and _OURS:
            gc.freeze()
