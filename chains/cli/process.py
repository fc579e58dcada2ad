"""The program's own process: how it starts (``own_process``) and how it ends (``finish``).

Only the program (``runner.py``, the ``chain-runner`` console script) calls these: they act on the whole process
(signals, the heap, imports, ``os._exit``), which the library never does inside someone else's.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import NoReturn


def own_process() -> None:
    """What the program does with a process that is its own, before the command: SIGTERM as Ctrl-C, a run may
    freeze the long-lived heap (``chains.engine.heap``), packages imported for nothing on the way to the first
    request wait for their first use (``chains.engine.lazy_imports``)."""
    sigterm_interrupts()  # first: a SIGTERM while the rest starts is an interrupt too
    from chains.engine.heap import claim_process
    from chains.engine.lazy_imports import defer_all

    claim_process()
    defer_all()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def sigterm_interrupts() -> None:
    """Until a command takes SIGTERM over, it is a Ctrl-C ("interrupted", exit 130), not a silent exit 143."""
    signal.signal(signal.SIGTERM, _interrupt)


def discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of it cannot fail with a second
    ``BrokenPipeError`` ("Exception ignored ..."); SIGPIPE itself stays ignored, for ``serve``'s sake."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (embedded, closed): nothing to flush into it either
        pass


def finish(code: int) -> NoReturn:
    """End the process with ``code``.

    The command is done: its records are written and their files closed.  What the interpreter would still do
    (0.3-0.45 s after a long run: freeing ~150k objects one by one) serves nobody, so once logging and stdio are
    flushed the process ends at once (``os._exit``), unless something still needs the interpreter's exit:
    LangSmith tracing (its background thread sends the last traces then), Ray, coverage, a thread that is not a
    daemon, or stdio that cannot be flushed (that error is the interpreter's to report).
    """
    if not _needs_exit_handlers():
        logging.shutdown()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(code)
        os._exit(code)
    sys.exit(code)


def _needs_exit_handlers() -> bool:
    if any(name in sys.modules for name in ("ray", "coverage")):
        return True
    main_thread = threading.main_thread()
    if any(t.is_alive() and not t.daemon and t is not main_thread for t in threading.enumerate()):
        return True
    if "langsmith.client" in sys.modules:  # a tracer was made (the bare package is imported by lazy_imports)
        from langsmith.utils import tracing_is_enabled

        return bool(tracing_is_enabled())
    return False
