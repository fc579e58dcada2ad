"""The CLI's commands as library calls: ``runner.py`` parses arguments and calls these.

Each returns an exit code: 0 all inputs succeeded, 1 some failed, 2 usage
error (raised as ``UsageError`` and mapped by the caller), 130 interrupted,
141 stdout's reader went away (``| head``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from chains.cli import scale
from chains.errors import UsageError
from chains.settings import RunSettings

if TYPE_CHECKING:
    from chains.engine.execution import BatchRun
    from chains.engine.interrupt import RunStop
    from chains.engine.shard import ShardCount
    from chains.io.sinks import GuardedStdout

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141
SERVER_PACKAGES = frozenset({"fastapi", "starlette", "uvicorn", "sse_starlette", "prometheus_client"})
"""What ``pip install 'chain-runner[server]'`` brings (and what they need)."""


@dataclass
class RunOptions:
    """What ``story`` and ``run`` were asked to do, besides the ``RunSettings`` (which hold the model, the limits
    and ``prompts_dirs``, as for every command)."""

    chain: str
    source: str
    topics: bool = False
    output: str | None = None
    metrics_out: str | None = None
    resume: bool = False
    overwrite: bool = False
    stream: bool | None = None
    quiet: bool = False
    cancel_on_interrupt: bool = False
    """``--tier batch``: on Ctrl-C cancel the provider's batches instead of leaving them for ``--resume``."""
    dry_run: bool = False
    """Send nothing: count the first step's requests, tokens and cost per tier (``chains.providers.dry_run``)."""
    shard: tuple[int, int] | None = None
    """``--shard I/N``: only the inputs whose key hashes to shard I of N (``chains.engine.shard``)."""
    workers: int | None = None
    """``--workers N``: run the chain in N Ray worker processes (``chains.scale``)."""
    ray_address: str | None = None
    """``--ray-address ADDR``: run the chain on this Ray cluster (``chains.scale``)."""
    program: str = "runner.py"
    """The name the CLI was called by, for the messages that name a command."""


def server_module() -> Any:
    """``chains.server``, or one usage error naming the extra to install when a package of it is missing."""
    try:
        from chains import server
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in SERVER_PACKAGES:
            raise UsageError("serve needs the server extra: pip install 'chain-runner[server]'") from exc
        raise
    return server


def list_command(settings: RunSettings, as_json: bool = False) -> int:
    """``list``: every chain of the packaged prompts and ``settings.prompts_dirs``."""
    from chains.spec.prompts_library import PromptLibrary
    from chains.spec.registry import list_chains

    chains = list_chains(PromptLibrary(settings.prompts_dirs))
    if as_json:
        print(json.dumps([_info_dict(c) for c in chains], indent=2))
        return EXIT_OK
    width = max(len(c.name) for c in chains)
    for info in chains:
        inputs = ", ".join([*info.required, *(f"{o}?" for o in info.optional)])
        print(f"{info.name.ljust(width)}  ({inputs})  {info.description}")
    return EXIT_OK


def _info_dict(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "description": info.description,
        "required": list(info.required),
        "optional": list(info.optional),
        "kind": info.kind,
        "sources": list(info.sources),
        "output_schema": info.output_schema,
    }


def show_command(name: str, settings: RunSettings) -> int:
    """``show CHAIN``: its inputs, prompt files and messages, found in the packaged prompts and ``settings.prompts_dirs``."""
    from chains.spec.prompts_library import PromptLibrary
    from chains.spec.registry import chain_info

    library = PromptLibrary(settings.prompts_dirs)
    info = chain_info(name, library)
    print(f"{info.name}: {info.description}")
    print(f"  kind:     {info.kind}")
    print(
        f"  inputs:   {', '.join(info.required) or '-'}"
        + (f" (optional: {', '.join(info.optional)})" if info.optional else "")
    )
    print(f"  files:    {', '.join(info.sources)}")
    prompts = info.prompts
    for prompt in prompts:
        spec = library.spec(prompt)
        print(f"\n# {library.label(prompt)}")
        params = spec.model_kwargs()
        if params:
            print("  model: " + ", ".join(f"{k}={v}" for k, v in params.items()))
        for message in spec.messages:
            text = getattr(message, "content", None)
            if text is None:
                text = f"<messages from {getattr(message, 'variable', '')}>"
            print(f"  [{message.role}] " + text.replace("\n", "\n          "))
    if info.output_schema:
        print("\n  output: JSON matching " + json.dumps(info.output_schema))
    return EXIT_OK


def _check_tracing() -> None:
    """LangSmith tracing with an endpoint that does not answer would hold the run's exit for many seconds."""
    from chains.providers.tracing import disable_unreachable_tracing

    warning = disable_unreachable_tracing()
    if warning:
        print(warning, file=sys.stderr)


async def run_command(options: RunOptions, settings: RunSettings) -> int:
    """``story`` / ``run``: every input to one record, a summary at the end."""
    from chains.cli.tiers import check_tier_flags
    from chains.io.inputs import count_inputs, detect_format, read_inputs, read_topics
    from chains.spec.prompts_library import PromptLibrary
    from chains.spec.registry import chain_info

    _check_output_flags(options)
    check_tier_flags(options, settings)
    scale.check_scale_flags(options, settings)
    engine = scale.ray_engine(options)
    _check_tracing()
    library = PromptLibrary(settings.prompts_dirs)
    info = chain_info(options.chain, library)
    if options.topics:
        if info.required != ("topic",):
            raise UsageError(
                f"--topics gives each line as 'topic', but {info.name} needs {', '.join(info.required)}; "
                f"use: {options.program} run {info.name} --input FILE"
            )
        fmt = "lines"

        def reader() -> Any:
            return read_topics(options.source)
    else:
        fmt = detect_format(options.source)

        def reader() -> Any:
            return read_inputs(options.source, chain=info.name, required=info.required, fmt=fmt)

    rows = reader()
    try:
        _check_output_files(options)
        total = count_inputs(options.source, fmt)
        inputs: Any = rows
        if total is None:  # standard input: look ahead two rows to know whether it is a single input
            head = list(itertools.islice(rows, 2))
            inputs = itertools.chain(head, rows)
            total = 1 if len(head) == 1 else None
        if options.dry_run:
            from chains.cli.dry_run import dry_run_command

            return await dry_run_command(settings, library, info, inputs)
        reopen = None if options.source == "-" else reader
        return await _run(options, settings, library, info, inputs, total, reopen, engine)
    finally:
        rows.close()


def _check_output_flags(options: RunOptions) -> None:
    if options.resume and not options.output:
        raise UsageError("--resume needs --output FILE.jsonl (the records of the run to resume)")
    if options.resume and options.overwrite:
        raise UsageError("--resume keeps --output's records and --overwrite replaces them; pass one of the two")
    if options.overwrite and not options.output:
        raise UsageError("--overwrite needs --output FILE.jsonl (the file to replace)")


def _check_output_files(options: RunOptions) -> None:
    """Before anything is paid for: no output is the input or another output, and --metrics-out is writable."""
    from chains.io.sinks import refuse_input_as_output

    refuse_input_as_output("--output", options.output, options.source)
    refuse_input_as_output("--metrics-out", options.metrics_out, options.source)
    if options.metrics_out and options.output:
        refuse_input_as_output("--metrics-out", options.metrics_out, options.output)
        if Path(options.metrics_out).resolve() == Path(options.output).resolve():
            raise UsageError(f"--metrics-out {options.metrics_out} is the --output file; pick another file")
    if options.metrics_out:
        from chains.io.sinks import check_writable

        check_writable(options.metrics_out, "--metrics-out")


async def _run(
    options: RunOptions,
    settings: RunSettings,
    library: Any,
    info: Any,
    inputs: Any,
    total: int | None,
    reopen: Callable[[], Any] | None = None,
    engine: Callable[..., Any] | None = None,
) -> int:
    """``reopen`` gives a fresh reader of the same inputs (None for standard input): a shard run counts its own.
    ``engine`` is the Ray engine's ``run_on_ray`` (``--workers``, ``--ray-address``), called in ``run_batch``'s place."""
    from chains.cli.tiers import left_running
    from chains.engine.callbacks import live_token_handler
    from chains.engine.execution import run_batch
    from chains.engine.interrupt import INTERRUPTED, STDOUT_CLOSED, RunStop
    from chains.engine.resume import done_keys, input_key
    from chains.engine.shard import as_shard
    from chains.io.sinks import GuardedStdout, JsonlSink, TextSink
    from chains.providers.models import ModelSession
    from chains.spec.registry import get_chain

    single = total == 1  # of the whole file, shard or not: a shard run is a batch run whatever its share
    shard = as_shard(options.shard) if options.shard is not None else None
    counted: ShardCount | None = None
    run_total = total if shard is None else None
    stream = options.stream if options.stream is not None else (single and not options.quiet)
    settings = settings.model_copy(update={"stream": stream})

    stderr = None
    if not options.quiet:  # rich only when something is shown
        from rich.console import Console

        from chains.cli.console import ProgressDisplay, print_summary

        stderr = Console(stderr=True)
    session = ModelSession(settings)
    session.check_budget_priced()  # before the output is touched or anything is sent
    stop = RunStop()
    stdout = GuardedStdout(lambda: stop.request(STDOUT_CLOSED))
    left: list[str] = []
    try:
        # The output is locked (and checked) before the first request, the reachability probe included.
        sink: Any = (
            JsonlSink(options.output, append=options.resume, overwrite=options.overwrite) if options.output else None
        )
        try:
            if not options.quiet:  # after the output checks: a refused run prints its one error line only
                session.announce()
            if options.output:
                session.open_batch_journal(options.output, fresh=options.overwrite)
            skip = done_keys(options.output) if options.resume and options.output else set()
            await session.check_reachable()
            chain = get_chain(info.name, session.model, library=library)
            live = single and stream and not options.quiet
            callbacks = [live_token_handler(cast(TextIO, stdout))] if live else []
            key = input_key(info.digest, session.identity, settings.model_overrides())
            if shard is not None:
                counted = scale.count_shard(reopen, key, shard)
                run_total = counted.inputs if counted is not None else None
            if sink is None and not live:
                sink = TextSink(stdout)
            if engine is None:
                admitted = stop.gate(inputs, lambda value: scale.untracked(key, skip, shard, value))
                batch: Any = run_batch(
                    chain,
                    admitted,
                    settings=settings,
                    limits=session.limits,
                    callbacks=[*callbacks, stop.tracker],
                    key=key,
                    skip=skip,
                    shard=shard,
                )
            else:
                batch = scale.on_ray(engine, info.name, inputs, options, settings, stop, key, skip, shard)
            status = session.model.batches.status_line if session.model.batches is not None else None
            progress = None if (single or stderr is None) else ProgressDisplay(run_total, info.name, stderr, status)
            await _consume(batch, sink, progress, stop, stdout if live else None, stderr)
        finally:
            if sink is not None:
                sink.close()
    finally:
        left = await session.aclose(cancel_batches=options.cancel_on_interrupt and stop.reason == INTERRUPTED)
    summary = batch.summary.finish().to_dict()
    summary.update(session.report())
    if shard is not None:
        summary["shard"] = scale.shard_summary(shard, counted, batch, summary)
    if options.metrics_out:
        write_json(options.metrics_out, summary, "--metrics-out")
    if stop.reason == STDOUT_CLOSED:
        return EXIT_PIPE  # quietly, like any program whose reader went away
    if stderr is not None:
        print_summary(summary, stderr)
        if shard is not None:
            print(scale.shard_line(summary["shard"]), file=sys.stderr)
    left_running(left, options.output)
    if stop.reason == INTERRUPTED:
        print(stop.summary_line(run_total, summary, options.output), file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary["failed"] or summary["not_run"] else EXIT_OK


async def _consume(
    batch: BatchRun, sink: Any, progress: Any, stop: RunStop, live: GuardedStdout | None, stderr: Any
) -> None:
    """Write each record as it finishes; after a stop, count the inputs it cancelled (they get no record)."""
    import asyncio

    from chains.engine.heap import HeapFreeze
    from chains.engine.interrupt import no_ctrl_c_echo

    last = None
    heap = HeapFreeze()
    heap.start()  # the process is ours: its long-lived heap leaves the collector's walks (chains.engine.heap)
    with contextlib.ExitStack() as stack:
        stack.enter_context(stop.signals())
        stack.enter_context(no_ctrl_c_echo(sys.stderr if progress is not None else None))
        if progress is not None:
            stack.enter_context(progress)
            refresh = asyncio.create_task(_refresh(progress, batch))
            stack.callback(refresh.cancel)
        try:
            async for last in batch:
                heap.count()
                stop.finished(last)
                _deliver(last, sink, live, stderr)
                if progress is not None:
                    progress.update(last, batch)
        except asyncio.CancelledError as exc:
            stop.swallow(exc)
        if live is not None and stop.reason is not None:
            live.write("\n")  # end the live text that was cut short before anything goes below it
            live.flush()
        if stop.count_cancelled(batch.summary) and progress is not None and last is not None:
            progress.update(last, batch)  # the final numbers: the cancelled counted, none in flight


async def _refresh(progress: Any, batch: BatchRun, every_s: float = 1.0) -> None:
    """The progress line moves while no record arrives (the clock, in flight; a batch run's batches)."""
    import asyncio

    while True:
        await asyncio.sleep(every_s)
        progress.update(None, batch)


def _deliver(record: Any, sink: Any, live: GuardedStdout | None, stderr: Any) -> None:
    if sink is not None:
        sink.write(record)
    if live is not None:
        live.write("\n" if record.ok else "")
        live.flush()
        if record.error is not None and stderr is not None:
            stderr.print(f"[red]failed[/red]: {record.error['message']}", highlight=False)


def merge_command(out: str, inputs: Sequence[str], *, overwrite: bool = False, quiet: bool = False) -> int:
    """``merge OUT IN...``: the records of several runs (``--shard`` runs, resumes) as one file, one per key
    (``chains.io.merge``); one summary line on stderr."""
    from chains.io.merge import merge_records

    report = merge_records(out, inputs, overwrite=overwrite)
    if not quiet:
        print(report.line(out), file=sys.stderr)
    return EXIT_OK


def write_json(path: str, data: Any, flag: str = "--metrics-out") -> None:
    from chains.io.sinks import cannot_write

    try:
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise cannot_write(flag, path, exc) from exc
