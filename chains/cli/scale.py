"""The CLI's part of scaling out: ``--shard I/N`` (its share of the inputs, its numbers) and ``--workers`` /
``--ray-address`` (the Ray engine, imported only when asked for)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from chains.errors import UsageError
from chains.settings import RunSettings

if TYPE_CHECKING:
    from chains.cli.commands import RunOptions
    from chains.engine.interrupt import RunStop
    from chains.engine.shard import Shard, ShardCount


def check_scale_flags(options: RunOptions, settings: RunSettings) -> None:
    ray = ray_flag(options)
    if ray and settings.tier == "batch":
        raise UsageError(
            f"{ray} runs the chain in Ray workers, but --tier batch gathers the requests of the whole run into "
            f"one process's batches; drop {ray} or --tier batch"
        )
    if options.shard is not None and options.dry_run:
        raise UsageError("--dry-run counts every input of the file (a shard's share is about 1/N of it); drop --shard")


def ray_flag(options: RunOptions) -> str | None:
    """The scale-out flag given (``--workers``, ``--ray-address``), if any: the run goes to the Ray engine."""
    if options.workers is not None:
        return "--workers"
    return "--ray-address" if options.ray_address is not None else None


def untracked(key: Any, skip: set[str], shard: Shard | None, value: Any) -> bool:
    """An input that will get no record: another shard's, or one that ``--resume`` skips."""
    if isinstance(value, BaseException):  # a reader's bad row: no key, shard 0's
        return shard is not None and not shard.owns(None)
    if shard is None and not skip:
        return False  # no key to compute
    name = key(value)
    return (shard is not None and not shard.owns(name)) or name in skip


def on_ray(
    engine: Callable[..., Any],
    chain_name: str,
    inputs: Any,
    options: RunOptions,
    settings: RunSettings,
    stop: RunStop,
    key: Any,
    skip: set[str],
    shard: Shard | None,
) -> Any:
    """The run on the Ray engine, its shard passed over by the engine as ``run_batch`` does (each record's index its
    place in the file).  No callbacks: they would run in the workers, and the live text and the stop's tracker
    belong to this process (nor do they pickle)."""
    admitted = stop.gate(inputs, lambda value: untracked(key, skip, shard, value))
    run = engine(
        chain_name,
        admitted,
        settings=settings,
        workers=options.workers,
        address=options.ray_address,
        key=key,
        skip=skip,
        callbacks=(),
        shard=shard,
    )
    run.start()  # Ray joined or started, workers built: a refusal is one line before any progress is shown
    stop.also(run.stop)  # a first Ctrl-C: no new input, those in flight on the workers cancelled and counted
    return run


def ray_engine(options: RunOptions) -> Callable[..., Any] | None:
    """``chains.scale.run_on_ray`` when a scale-out flag asks for it, else None: Ray is an optional extra (and slow
    to import), so it is imported only then, and before any file is touched."""
    flag = ray_flag(options)
    if flag is None:
        return None
    try:
        from chains.scale import run_on_ray  # type: ignore[attr-defined, unused-ignore]  # until chains/scale/__init__.py exports it
    except ImportError as exc:  # Ray (or the engine itself) is not installed
        if exc.name not in ("chains.scale", "ray") and not (exc.name or "").startswith(("ray.", "chains.scale.")):
            raise
        raise UsageError(f"{flag} needs the Ray engine: pip install 'chain-runner[ray]' ({exc})") from exc
    return cast("Callable[..., Any]", run_on_ray)


def count_shard(reopen: Callable[[], Any] | None, key: Any, shard: Shard) -> ShardCount | None:
    """The shard's share of the file, counted in one more pass over it (for the progress total and the summary);
    None for standard input, or a file that cannot be read again."""
    from chains.engine.shard import count_shard
    from chains.errors import ChainRunnerError

    if reopen is None:
        return None
    try:
        rows = reopen()
    except (ChainRunnerError, OSError):
        return None
    try:
        return count_shard(rows, key, shard)
    except (ChainRunnerError, OSError):
        return None
    finally:
        rows.close()


def shard_summary(shard: Shard, counted: ShardCount | None, batch: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """The shard's numbers for the summary: its inputs, of how many (read from standard input: as far as read)."""
    of: int | None
    if counted is not None:
        inputs, of = counted
    else:
        inputs = summary["items"] + summary["skipped"]
        passed = getattr(batch, "other_shards", None)
        of = inputs + passed if passed is not None else None
    return {"index": shard.index, "count": shard.count, "inputs": inputs, "of": of}


def shard_line(numbers: dict[str, Any]) -> str:
    share = f"{numbers['inputs']:,} of {numbers['of']:,}" if numbers["of"] is not None else f"{numbers['inputs']:,}"
    return f"shard {numbers['index']}/{numbers['count']}: {share} inputs"
