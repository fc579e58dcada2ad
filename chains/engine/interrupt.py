"""Stopping a batch run part-way (Ctrl-C, SIGTERM, a closed stdout) with every input accounted for.

Cancelling the task that consumes the records is not enough: records that had finished but
still sat in ``run_batch``'s queue would be dropped unwritten, and the inputs in flight would
vanish from the summary with what they had already spent.  A ``RunStop`` instead

- closes the gate on the inputs, so that no new input is admitted;
- cancels only the inputs whose chain is still running (a callback handler sees each input's
  top-level chain start and end, in the input's own task), so every finished record is still
  delivered and written;
- counts each input it cancelled in the run's summary, with what it had spent so far (the run
  did spend it), but writes no record for it: it has no output, and ``--resume`` runs it again
  like the inputs that never started;
- and says in one line how many inputs did not run and how many were cancelled: with the
  finished records (and those ``--resume`` skipped) that is every input.

A second signal cancels the consumer outright, for a provider that does not let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from chains.engine.callbacks import TOP_CHAIN
from chains.engine.metrics import ItemMetrics, RunSummary, current_item

INTERRUPTED = "interrupted"
STDOUT_CLOSED = "stdout closed"
_CANCELLED = {"type": "Cancelled", "message": "cancelled: the run was stopped while this input ran"}


@dataclass(slots=True)
class _Admitted:
    """An input that was handed to the run and has no record yet."""

    value: Any
    task: asyncio.Task[Any] | None = None
    item: ItemMetrics | None = None
    started: float = 0.0
    ended: bool = False


class RunStop:
    """Whether (and why) a run was asked to stop, and the inputs it has to account for."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.admitted = 0
        self._open: dict[int, _Admitted] = {}  # admitted inputs without a record: in flight or queued
        self._consumer: asyncio.Task[Any] | None = None
        self._consumer_cancelled = False
        self.tracker = _Tracker(self)
        self._hooks: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ the inputs

    def also(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when the stop is first requested (an engine whose inputs run elsewhere: Ray's workers)."""
        self._hooks.append(hook)

    def gate(self, inputs: Iterable[Any], skipped: Callable[[Any], bool]) -> Iterator[Any]:
        """``inputs`` until the run is stopped; ``skipped`` ones (``--resume``) will get no record."""
        source = iter(inputs)
        while self.reason is None:
            try:
                value = next(source)
            except StopIteration:
                return
            index = self.admitted  # run_batch numbers the inputs in the order it pulls them
            self.admitted += 1
            if not skipped(value):
                self._open[index] = _Admitted(value)
            yield value

    def finished(self, record: Any) -> None:
        """``record`` was delivered: its input is accounted for."""
        self._open.pop(record.index, None)

    # ------------------------------------------------------------------ stopping

    def request(self, reason: str) -> None:
        """Stop admitting inputs and cancel those still running; a second request cancels the consumer."""
        if self.reason is not None:
            if self._consumer is not None and not self._consumer.done():
                self._consumer_cancelled = True
                self._consumer.cancel()
            return
        self.reason = reason
        for hook in self._hooks:
            hook()
        for admitted in self._open.values():
            if admitted.task is not None and not admitted.ended:
                admitted.task.cancel()

    def swallow(self, error: asyncio.CancelledError) -> None:
        """A cancellation that reached the consumer: ours to absorb when the run was stopped, else re-raised."""
        if self.reason is None:
            raise error
        task = asyncio.current_task()
        if self._consumer_cancelled and task is not None:
            task.uncancel()  # the consumer goes on to write the records and the summary

    def count_cancelled(self, summary: RunSummary) -> int:
        """Fold each input that started and got no record into ``summary`` as cancelled; how many there were."""
        cancelled = 0
        for index, admitted in sorted(self._open.items()):
            if admitted.item is None:
                continue  # never started: not run
            admitted.item.status = "cancelled"
            if admitted.item.latency_s is None:
                admitted.item.latency_s = time.perf_counter() - admitted.started
            summary.add(index, admitted.item, dict(_CANCELLED))  # an error: its latency is no answer's latency
            cancelled += 1
        self._open.clear()
        return cancelled

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Ctrl-C and SIGTERM request a stop while the block runs; the previous handlers come back after."""
        loop = asyncio.get_running_loop()
        self._consumer = asyncio.current_task()
        installed: dict[signal.Signals, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self.request, INTERRUPTED)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / Windows
                continue
            installed[sig] = previous
        try:
            yield
        finally:
            for installed_sig, previous in installed.items():
                loop.remove_signal_handler(installed_sig)
                with contextlib.suppress(TypeError, ValueError):
                    signal.signal(installed_sig, previous)  # e.g. runner.py's SIGTERM-as-Ctrl-C, not SIG_DFL

    # ------------------------------------------------------------------ what did not run

    def summary_line(self, total: int | None, summary: dict[str, Any], output: str | None) -> str:
        """One line: how many inputs did not run, how many were cancelled mid-way, and how to run them.

        With the finished records (ok and failed) and the skipped ones these are every input:
        not run = total - skipped - ok - failed - cancelled (inputs ``--max-cost`` stopped are not run).
        """
        cancelled = summary["cancelled"]
        and_cancelled = f" and {cancelled:,} cancelled mid-way" if cancelled else ""
        if total is not None:
            not_run = total - summary["skipped"] - summary["ok"] - summary["failed"] - cancelled
            if not_run or not cancelled:
                head = f"{self.reason}: {not_run:,} of {total:,} not run{and_cancelled}"
            else:
                head = f"{self.reason}: {cancelled:,} of {total:,} cancelled mid-way"
        else:
            head = f"{self.reason}: the rest of the input not run{and_cancelled}"
        if output:
            return f"{head}; rerun with --resume to run them ({output} keeps every finished record)"
        return f"{head}; no --output was given, so no records were kept: add --output FILE.jsonl to be able to --resume"


class _Tracker(BaseCallbackHandler):
    """Sees each input's top-level chain start and end, inline in the input's own task.

    That task is the one to cancel on a stop, and its ``current_item()`` holds what the input
    spent so far.  Model, retriever and other events are ignored, so the handler costs one
    cheap call per chain step.
    """

    run_inline = True
    watches = TOP_CHAIN

    def __init__(self, stop: RunStop) -> None:
        self.stop = stop
        self._runs: dict[UUID, int] = {}

    @property
    def ignore_llm(self) -> bool:
        return True

    @property
    def ignore_chat_model(self) -> bool:
        return True

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_agent(self) -> bool:
        return True

    @property
    def ignore_retry(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if parent_run_id is not None or not metadata or "chain_runner_index" not in metadata:
            return
        admitted = self.stop._open.get(metadata["chain_runner_index"])
        if admitted is None:
            return
        self._runs[run_id] = metadata["chain_runner_index"]
        admitted.task = asyncio.current_task()
        admitted.item = current_item()
        admitted.started = time.perf_counter()
        if self.stop.reason is not None and admitted.task is not None:
            admitted.task.cancel()  # admitted just before the stop: do not start paying for it now

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._ended(run_id, parent_run_id)

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._ended(run_id, parent_run_id)

    def _ended(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        if parent_run_id is not None:
            return
        index = self._runs.pop(run_id, None)
        admitted = self.stop._open.get(index) if index is not None else None
        if admitted is not None:
            admitted.ended = True  # its record is on its way: never cancel it now


@contextlib.contextmanager
def no_ctrl_c_echo(stream: TextIO | None) -> Iterator[None]:
    """While a progress line is live on the terminal, Ctrl-C is not echoed as ``^C``.

    The progress line fills the terminal's width, so the echo wraps onto a row of its own; the
    line's last redraw then clears only that row, and the user sees the progress line twice
    (once more for every further Ctrl-C).  The terminal's settings are restored afterwards.
    """
    saved = _echoctl_off(stream)
    try:
        yield
    finally:
        if saved is not None:
            _set_terminal(saved[0], saved[1])


def _echoctl_off(stream: TextIO | None) -> tuple[int, list[Any]] | None:
    if stream is None:
        return None
    try:
        import termios

        fd = stream.fileno()
        flag = getattr(termios, "ECHOCTL", 0)
        # Only in the foreground: a background job that changes the terminal is stopped (SIGTTOU).
        if not flag or not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
            return None
        saved = termios.tcgetattr(fd)
    except (ImportError, AttributeError, OSError, ValueError):  # not a terminal, not POSIX, no fileno
        return None
    quiet = [*saved[:3], saved[3] & ~flag, *saved[4:]]
    return (fd, saved) if _set_terminal(fd, quiet) else None


def _set_terminal(fd: int, attributes: list[Any]) -> bool:
    import termios

    try:
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # moved to the background meanwhile: still fine
    except ValueError:  # not the main thread
        previous = None
    try:
        termios.tcsetattr(fd, termios.TCSANOW, attributes)
        return True
    except (OSError, termios.error):
        return False
    finally:
        if previous is not None:
            signal.signal(signal.SIGTTOU, previous)
